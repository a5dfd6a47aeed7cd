"""The rewrite rules (reclang/rewrite.py on the IR, RULES of reclang/codegen/
stable_forms.py on the printers' sympy expressions): each fires where it should, says
so under RECLANG_DEBUG=5, and keeps every value (outputs and gradients, against the
same cell built without rules)."""

import sympy
import torch
from helpers import as_reference, assert_matches_reference, random_inputs, random_state

import reclang
from reclang import rewrite
from reclang.analysis.lanes import lane_form
from reclang.codegen import stable_forms
from reclang.functions import NAMED

SPEC = """cell c(N = 3):
    input x[N]
    param W[N, N] ~ normal(0, 0.5)
    param V[N, N] ~ normal(0, 0.5)
    state h[N] = 0
    h[n] <- 0.9 * h[n] + 1 + 2 + x[n]
    out y[n] = sum(m: W[n, m] * x[m] + V[n, m] * h[m])
"""


def fired(capsys) -> list[str]:
    return [line.split(":")[0].split()[-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("# rewrite ")]


def test_every_ir_rule_fires_and_says_so(monkeypatch, capsys):
    monkeypatch.setenv("RECLANG_DEBUG", "5")
    cell = reclang.loads(SPEC, "c.rec")
    names = fired(capsys)
    assert set(names) == {r.name for r in rewrite.RULES}
    # 0.9 h + 1 + 2 + x: the constants and the input together (1 + 2 folded), h alone
    consts = [cell.ir.node(i).arg for i in cell.ir.graph if cell.ir.node(i).op.name == "CONST"]
    assert sorted(consts) == [0.9, 3]


def test_the_rules_keep_every_value(monkeypatch):
    """The rewritten cell against the cell built without rules, in float64."""
    cell = reclang.loads(SPEC, "c.rec")
    monkeypatch.setattr(rewrite, "RULES", [])
    plain = reclang.loads(SPEC, "c.rec")
    assert plain.ir.graph.number_of_nodes() > cell.ir.graph.number_of_nodes()
    torch.manual_seed(0)
    got = cell.module("sequential").double()
    torch.manual_seed(0)
    want = plain.module("sequential").double()
    assert_matches_reference(got, as_reference(want), random_inputs(got, 2, 5),
                             random_state(got, 2), atol=1e-12, rtol=1e-10)


def test_a_sum_of_a_sum_is_two_einsums():
    """sum(m: W x + V h) was torch.sum of a [B, N, N] sum of products."""
    step = reclang.loads(SPEC, "c.rec").source("sequential").split("def step")[1]
    line = next(s for s in step.splitlines() if s.strip().startswith("y ="))
    assert line.count("torch.einsum") == 2 and "torch.sum" not in line


def test_a_re_association_hoists_w_x_plus_b():
    """The loop of an LSTM adds U h to the hoisted W x + b: b is not added every step."""
    source = reclang.load("specs/lstm.rec").source("sequential")
    loop = source.split("for t in range(T):")[1].split("def step")[0]
    z = next(s for s in loop.splitlines() if s.strip().startswith("z ="))
    assert z.count(" + ") == 1 and "einsum" in z and "b" not in z.split("+")[1]


def test_the_fused_loop_loads_w_x_plus_b_as_one_operand():
    form = lane_form(reclang.load("specs/lstm.rec", D=3, N=5).ir)
    assert len(form.operands) == 4 and all(o.time_varying for o in form.operands)
    assert all(len(o.expr.args) == 2 for o in form.operands)  # W[g] x + b[g]


x = sympy.Symbol("x", real=True)
SYMPY_CASES = [  # (rule, expression, what it becomes)
    ("sigmoid", 3 / (1 + sympy.exp(-x)), 3 * NAMED["sigmoid"](x)),
    ("softplus", sympy.log(1 + sympy.exp(2 * x)), NAMED["softplus"](2 * x)),
    ("expm1", 1 - sympy.exp(x) * sympy.exp(x), -NAMED["expm1"](2 * x)),
    ("log-exp", sympy.log(sympy.exp(3 * x) * (x ** 2 + 1)), 3 * x + sympy.log(x ** 2 + 1)),
]


def test_every_sympy_rule_fires_says_so_and_keeps_the_value(monkeypatch, capsys):
    monkeypatch.setenv("RECLANG_DEBUG", "5")
    assert {r.name for r in stable_forms.RULES} == {name for name, _, _ in SYMPY_CASES}
    for name, expr, want in SYMPY_CASES:
        got = stable_forms.rewrite(expr)
        assert got == want and fired(capsys) == [name]
        for v in map(sympy.Rational, (-30.0, -0.5, 1e-9, 2.0, 30.0)):  # exact points
            assert float(sympy.N(got.subs(x, v), 30)) == float(sympy.N(expr.subs(x, v), 30))


def test_a_log_decay_of_a_softplus_gate_is_printed_without_an_exp_that_overflows():
    """-log(e^a e^x + e^a) (how sympy wrote exp(-softplus(x) (1 + erf(x)))'s log) was
    printed as such: -inf past x = 88 in float32, where the decay is -2 softplus(x)."""
    a = sympy.log(1 + sympy.exp(x)) * sympy.erf(x)
    got = stable_forms.rewrite(-sympy.log(sympy.exp(a) * sympy.exp(x) + sympy.exp(a)))
    assert got == -NAMED["softplus"](x) * sympy.erf(x) - NAMED["softplus"](x)


def test_a_rule_applies_inside_a_larger_expression_to_a_fixed_point(capsys, monkeypatch):
    monkeypatch.setenv("RECLANG_DEBUG", "5")
    expr = sympy.log(1 + sympy.exp(-x)) + (1 - sympy.exp(1 / (1 + sympy.exp(x))))
    got = stable_forms.rewrite(expr)
    assert got == NAMED["softplus"](-x) - NAMED["expm1"](NAMED["sigmoid"](-x))
    assert sorted(fired(capsys)) == ["expm1", "sigmoid", "softplus"]
