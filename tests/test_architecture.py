"""The walk-through of docs/architecture.md, run: a backend that exists only here is
added through the protocol and the registry, and the rest of reclang (verdicts, auto,
inspect, the module) takes it without a change elsewhere."""

import pytest
import torch
from helpers import random_inputs, random_state

import reclang
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
