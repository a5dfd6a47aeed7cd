"""A verdict and a lowering cannot disagree: for every catalogue spec and every backend,
a yes lowers, loads and runs one small call (triton: lowers and loads, and runs under
the interpreter for a few specs; cpu: lowers and loads, and compiles and runs for the same few), and a no carries a reason with the spec's
file:line:col or names a missing package. The same over random cells (hypothesis).
Each form is built at most once per cell."""

import re

import pytest
import torch
from helpers import SPECS, random_inputs, small
from hypothesis import HealthCheck, given, settings
from test_fused_random_cells import cells as nonlinear_cells
from test_random_cells import cells

import reclang
import reclang.analysis.ir_to_forms as ir_to_forms
from reclang.backends import base as registry
from reclang.codegen.fused_loop import TritonPrinter
from reclang.generated import load_source

LOCATED = re.compile(r"[\w<>-]+\.rec:\d+:\d+")
PACKAGE = re.compile(r"needs the package \w+")
BACKENDS = registry.names()
RUN_ON_TRITON = {"min_gru", "lstm", "gla"}  # under TRITON_INTERPRET=1: slow, a few only


def check_verdicts(cell, run_triton: bool = False) -> list[str]:
    """Asserts the property for every backend; returns those that said yes."""
    yes = []
    for v in cell.verdicts:
        if not v.supported:
            assert LOCATED.search(v.reason) or PACKAGE.search(v.reason), (v.backend, v.reason)
            continue
        yes.append(v.backend)
        source = cell.source(v.backend)  # lower
        load_source(source, f"{cell.name}_{v.backend}")  # load
        if v.backend not in ("triton", "cpu") or run_triton:  # cpu: a compile per cell
            run_once(cell, v.backend)
    return yes


def run_once(cell, backend: str) -> None:
    m = cell.module(backend).double()
    x = random_inputs(m, 1, 3)
    y, final = m(**x)
    assert all(t.shape[:2] == (1, 3) for t in (y.values() if isinstance(y, dict) else [y]))
    # the declared states, and what lag and t carry (lag_<name>, t: docs/module.md)
    assert set(final) == set(m.initial_state(1, torch.float64, "cpu")) >= {
        d.name for d in cell.ir.states}


@pytest.mark.parametrize("name", sorted(p.stem for p in SPECS.glob("*.rec")))
def test_every_yes_lowers_and_runs_and_every_no_says_where(name):
    cell = small(name)
    yes = check_verdicts(cell, run_triton=name in RUN_ON_TRITON)
    assert "sequential" in yes


@pytest.mark.parametrize("text, yes", [
    ("cell c(N = 3):\n    input x[N]\n    out y[n] = tanh(x[n]) * 2\n",  # no state
     ["sequential", "scan", "fft", "triton"]),
    ("cell c(N = 3):\n    input x[N]\n    state h[N] = 0, g[N] = 0\n"  # coupled
     "    h[n] <- 0.5 * h[n] + x[n]\n    g[n] <- 0.9 * g[n] + h[n]\n    out y[n] = g[n]\n",
     ["sequential"]),
])
def test_cells_outside_the_catalogue(text, yes):
    """A cell without state: its gated form indexed a second state (IndexError), and
    the other forms' refusals said no place ("the recurrence is diag-lti")."""
    assert check_verdicts(reclang.loads(text, "c.rec"), run_triton=True) == yes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells())
def test_random_cells_verdicts_agree_with_their_lowerings(text):
    torch.manual_seed(0)
    check_verdicts(reclang.loads(text, "random.rec"))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nonlinear_cells())
def test_random_nonlinear_cells_verdicts_agree_with_the_fused_loop(text):
    """Cells the fused loop takes (test_random_cells' are nonlinear with states of two
    shapes, which it refuses): any mix of the language's functions."""
    assert "triton" in check_verdicts(reclang.loads(text, "random.rec"))


def test_a_function_without_a_triton_spelling_is_refused_at_its_use(monkeypatch):
    """The fused loop's verdict walks the step's functions (it printed the kernel and its
    backward before): one without a Triton spelling is a no, at the spec's tanh."""
    functions = {f: s for f, s in TritonPrinter.FUNCTIONS.items() if f.__name__ != "tanh"}
    monkeypatch.setattr(TritonPrinter, "FUNCTIONS", functions)
    verdict = small("lstm").verdict("triton")
    assert not verdict.supported
    assert re.fullmatch(r"lstm\.rec: cannot print tanh in the fused kernel \(no Triton "
                        r"spelling or derivative\), at lstm\.rec:\d+:\d+", verdict.reason)


@pytest.mark.parametrize("name, kind", [("gla", "matrix"), ("delta_net", "matrix"),
                                        ("lstm", "lanes"), ("min_gru", "gated"),
                                        ("min_gru", "diag")])
def test_each_form_is_built_once_per_cell(name, kind, monkeypatch):
    """The verdicts of every backend and the lowerings of chunk and triton read one
    form object (GLA's chunk operands were derived three times before)."""
    calls = []
    build = ir_to_forms.BUILDERS[kind]
    monkeypatch.setitem(ir_to_forms.BUILDERS, kind,
                        lambda plan: calls.append(kind) or build(plan))
    cell = small(name)
    for v in cell.verdicts:
        if v.supported:
            cell.source(v.backend)
    assert cell.plan.form_of(kind) is cell.plan.form_of(kind)
    assert cell.plan.forms[kind] is cell.plan.form_of(kind)  # every kind, by kind
    assert calls == [kind]


def test_unfit_forms_say_where():
    """A form a cell does not take is an Unfit whose reason cites its loc."""
    plan = small("lstm").plan
    unfit = plan.form_of("matrix")
    assert isinstance(unfit, reclang.analysis.forms.Unfit)
    assert unfit.loc in unfit.reason and LOCATED.fullmatch(unfit.loc)
    # each form only for its canonical forms: Elman (not affine) got a GatedDiag with
    # a = ∂f/∂h = 0 (its h enters through a weight), min_gru (diagonal) chunk operands
    assert isinstance(small("elman").plan.form_of("gated"), reclang.analysis.forms.Unfit)
    assert isinstance(small("min_gru").plan.form_of("matrix"), reclang.analysis.forms.Unfit)
