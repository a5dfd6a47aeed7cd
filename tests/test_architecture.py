"""The walk-through of docs/architecture.md, run: a backend that exists only here is
added through the protocol and the registry, and the rest of reclang (verdicts, auto,
inspect, the module) takes it without a change elsewhere."""

from dataclasses import dataclass

import pytest
import torch
from helpers import random_inputs, random_state

import reclang
from reclang.analysis import ir_to_forms
from reclang.analysis.forms import Unfit
from reclang.backends import base
from reclang.codegen.scan import ScanProgram
from reclang.schedule import ScanSchedule

DIAG = """cell leaky(N = 4):
    input x[N], g[N]
    state h[N] = 0
    h[n] <- sigmoid(g[n]) * h[n] + x[n]
    out y[n] = 2 * h[n]
"""
LOOPY = """cell loopy(N = 4):
    input x[N]
    state h[N] = 0
    h[n] <- tanh(h[n] + x[n])
    out y[n] = h[n]
"""


class NarrowScan(base.Backend):
    """A scan that refuses states of more than one axis: the smallest backend with a
    form, a refusal at a location and a lowering (here the scan's program, printed
    with its own title)."""

    name, forms, kind, schedules = "narrow_scan", ("diag", "diag-lti"), "diag", ScanSchedule

    def refusal(self, plan) -> str:
        wide = [s for s in plan.states if len(s.axes) > 1]
        if wide:
            return f"{plan.at(wide[0])}: {wide[0].name} has more than one axis"
        return super().refusal(plan)  # the form's own: an Unfit's reason

    def lower(self, plan, schedule: ScanSchedule) -> str:
        program = ScanProgram(plan.ir, self.form(plan), schedule, plan.summary)
        program.title = "Test-only"
        return program.source()


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", [*base._REGISTRY, NarrowScan()])


def test_a_new_backend_is_listed_checked_and_run(registered):
    cell = reclang.loads(DIAG, "leaky.rec")
    assert "narrow_scan" in base.names()
    assert cell.verdict("narrow_scan").supported
    assert "narrow_scan yes  runs diag" in cell.describe()
    m, ref = cell.module("narrow_scan"), cell.module("sequential")
    m.load_state_dict(ref.state_dict())
    assert "Test-only backend" in m.source
    x = random_inputs(m, 2, 7, dtype=torch.float64)
    h0 = random_state(m, 2, dtype=torch.float64)
    (y, s), (y_ref, s_ref) = m(**x, state=h0), ref(**x, state=h0)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(s["h"], s_ref["h"])


def test_a_new_backend_refuses_with_a_location(registered):
    cell = reclang.loads(LOOPY, "loopy.rec")
    verdict = cell.verdict("narrow_scan")
    assert not verdict.supported
    assert verdict.reason.startswith("needs diag or diag-lti; loopy.rec:4:")
    with pytest.raises(reclang.RecError, match="cannot run cell loopy"):
        cell.module("narrow_scan")


# ---- adding a canonical form ----------------------------------------------------------
@dataclass(frozen=True)
class Contracting:
    """A test-only form: a diagonal cell whose every decay is proven in (0, 1], with the
    Diag form it lowers (what a backend that needs a contraction would consume)."""

    decays: tuple[tuple[str, object], ...]   # (state, its decay as the analyzer has it)
    diag: object


def contracting(plan):
    """The form's builder: the form, or an Unfit at the state that breaks it."""
    diag = plan.form_of("diag")
    if isinstance(diag, Unfit):
        return diag
    for s in plan.states:
        if not (s.transition.positive and s.transition.at_most_one):
            return Unfit(f"{plan.at(s)}: the decay of {s.name} ({s.transition.decay}) is "
                         "not proven in (0, 1]", plan.at(s))
    return Contracting(tuple((s.name, s.transition.decay) for s in plan.states), diag)


class ContractingScan(NarrowScan):
    """A backend of the new form: its verdict is the form's (an Unfit's reason)."""

    name, kind = "contracting_scan", "contracting"

    def refusal(self, plan) -> str:
        return base.Backend.refusal(self, plan)

    def lower(self, plan, schedule: ScanSchedule) -> str:
        form = self.form(plan)
        return ScanProgram(plan.ir, form.diag, schedule, plan.summary).source()


@pytest.fixture
def new_form(monkeypatch):
    monkeypatch.setitem(ir_to_forms.BUILDERS, "contracting", contracting)
    monkeypatch.setattr(base, "_REGISTRY", [*base._REGISTRY, ContractingScan()])


CONTRACTING = DIAG.replace("sigmoid(g[n]) * h[n]", "0.9 * h[n]")  # proven in (0, 1]


def test_a_new_form_is_built_once_and_decides_its_backend(new_form):
    cell = reclang.loads(CONTRACTING, "leaky.rec")
    form = cell.plan.form_of("contracting")
    assert isinstance(form, Contracting) and form is cell.plan.form_of("contracting")
    assert cell.verdict("contracting_scan").supported
    m, ref = cell.module("contracting_scan"), cell.module("sequential")
    m.load_state_dict(ref.state_dict())
    x = random_inputs(m, 2, 5, dtype=torch.float64)
    torch.testing.assert_close(m(**x)[0], ref(**x)[0])


def test_a_new_form_refuses_at_the_state(new_form):
    growing = DIAG.replace("sigmoid(g[n]) * h[n]", "exp(g[n]) * h[n]")  # decay > 1 possible
    verdict = reclang.loads(growing, "grow.rec").verdict("contracting_scan")
    assert not verdict.supported
    assert verdict.reason.startswith("grow.rec:4:5: the decay of h")
