"""The lane form (reclang/analysis/lanes.py) that the fused Triton kernel runs: what it
finds in a cell, and the reasons, with their places, for the cells it refuses."""

import pytest
import sympy
from helpers import SPECS

import reclang
from reclang import rewrite
from reclang.analysis.lanes import Unsupported, lane_form


def test_lstm_splits_into_products_operands_and_unit_equations(monkeypatch):
    # the IR as written: reclang/rewrite.py's regroup makes W x + b one operand
    # (tests/test_rewrite.py)
    monkeypatch.setattr(rewrite, "RULES", [])
    form = lane_form(reclang.load(SPECS / "lstm.rec", D=3, N=5).ir)
    assert (form.heads, form.lanes, form.states) == ((), 5, ["h", "c"])
    assert [w.state for w in form.weights] == ["h"] * 4           # U[g] h, one per gate
    # W[g] x (read at every step) and b[g] (loaded once), per gate
    assert sorted(o.time_varying for o in form.operands) == [False] * 4 + [True] * 4
    r = [w.symbol for w in form.weights]
    o = [x.symbol for x in form.operands]
    # each gate reads its product and its operand (W x + b), nothing across units
    used = form.updates["c"].free_symbols | form.updates["h"].free_symbols
    assert set(r) <= used and set(o) <= used
    assert form.prev["c"] in form.updates["c"].free_symbols
    assert form.lines == {"c": 15, "h": 16, "y": 17}


def test_the_backend_merges_operands_that_are_only_added():
    from reclang.analysis.ir_to_forms import merge_operands

    ir = reclang.load(SPECS / "lstm.rec", D=3, N=5).ir
    form = lane_form(ir)
    merge_operands(form, ir)  # W[g] x + b[g]: one load per gate and step
    assert len(form.operands) == 4 and all(o.time_varying for o in form.operands)
    assert all(len(o.expr.args) == 2 for o in form.operands)


def test_heads_are_axes_before_the_units():
    form = lane_form(reclang.load(SPECS / "slstm.rec", D=4, NH=3, DH=5).ir)
    assert (form.heads, form.lanes) == ((3,), 5)
    assert len(form.head_symbols) == 1 and isinstance(form.head_symbols[0], sympy.Symbol)


CELL = """cell c(N = 4):
    input x[N]
    input g[N, N]
    param U[N, N] ~ normal(0, 1)
    state h[N] = 0
{body}
    out y[n] = h[n]
"""


@pytest.mark.parametrize("body, reason", [
    ("    h[n] <- tanh(sum(m: g[n, m] * h[m]) + x[n])",
     "c.rec:6:5: the matrix multiplying h changes with time"),
    ("    h[n] <- tanh(h[0] + x[n])", "c.rec:6:.*reads h at another unit than its own"),
    ("    h[n] <- tanh(sum(m: U[n, m] * tanh(h[m])) + x[n])",
     "c.rec:6:5: a sum over the units of a state that is read through tanh"),
])
def test_refusals_name_the_place_and_the_reason(body, reason):
    cell = reclang.loads(CELL.format(body=body), "c.rec")
    assert cell.plan.form == "nonlinear"
    with pytest.raises(Unsupported, match=reason):
        lane_form(cell.ir)
    verdict = next(v for v in cell.verdicts if v.backend == "triton")
    assert not verdict.supported and verdict.reason.startswith("c.rec:6:")


def test_too_many_units_and_states_of_different_shapes():
    with pytest.raises(Unsupported, match="300 units per head; the fused kernel keeps at "
                                          "most 256"):
        lane_form(reclang.load(SPECS / "lstm.rec", N=300).ir)
    with pytest.raises(Unsupported, match="needs states of one shape"):
        lane_form(reclang.load(SPECS / "lmu.rec").ir)


def test_a_state_whose_update_reads_no_state_is_refused():
    """Its new value would be an operand computed before the loop: refused, not run
    with the state's initial value in its place."""
    cell = reclang.loads(CELL.format(body="    h[n] <- tanh(x[n] * g[n, 0])"), "c.rec")
    with pytest.raises(Unsupported, match="c.rec:7:.*reads the new value of h, whose update "
                                          "depends on no state"):
        lane_form(cell.ir)
