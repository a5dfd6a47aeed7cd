"""The cpu backend for `nonlinear` cells (LSTM, GRU, sLSTM, Elman...) and real diagonal
ones (minGRU, HGRN, RG-LRU: their gates computed in the loop): the whole time loop,
forward and backward, in C++ compiled for this machine (reclang/codegen/cpp.py,
backends/templates/cpu_loop.cpp.jinja; built and cached by reclang/runtime/cpp.py).
It lowers the lane form the triton fused loop lowers, and needs a C++ compiler."""

from __future__ import annotations

from reclang.codegen.cpp import cpu_source
from reclang.codegen.printable import triton_refusal
from reclang.runtime.cpp import missing_compiler
from reclang.schedule import CpuLoopSchedule

from .base import Backend, register


class CpuLoop(Backend):
    name, kind, schedules = "cpu", "loop_lanes", CpuLoopSchedule
    forms = ("nonlinear", "diag", "diag-lti")  # the diagonal ones: a scan at bandwidth

    def refusal(self, plan) -> str:
        """Why the compiled loop cannot run the cell ("" when it can): no compiler, the
        lane form's Unfit, or a function of the step without a kernel spelling (the C++
        prelude defines every Triton spelling: tests/test_cpu_loop.py) or derivative."""
        why = missing_compiler() or super().refusal(plan)
        return why or triton_refusal(plan, self.form(plan).expressions(), "the cpu kernel")

    def lower(self, plan, schedule: CpuLoopSchedule) -> str:
        return cpu_source(plan.ir, self.form(plan), schedule, plan.summary)


register(CpuLoop())
