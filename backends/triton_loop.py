"""The triton backend for `nonlinear` cells (LSTM, GRU, sLSTM, Elman...): one fused kernel
runs the whole time loop; see reclang/codegen/fused_loop.py for the recurrence, the
algorithm, its cost and its numerics.
"""

from __future__ import annotations

import textwrap

from reclang.codegen.fused_loop import fused_program, operands_import
from reclang.codegen.printable import triton_refusal
from reclang.codegen.render import assemble, missing_dependency
from reclang.schedule import FusedLoopSchedule

from .base import Backend, register


class TritonLoop(Backend):
    name, forms, kind, schedules = "triton", ("nonlinear",), "lanes", FusedLoopSchedule

    def refusal(self, plan) -> str:
        """Why the fused kernel cannot run the cell ("" when it can): a missing package,
        the lane form's Unfit, or a function of the step without a Triton spelling or
        derivative."""
        why = missing_dependency() or super().refusal(plan)
        return why or triton_refusal(plan, self.form(plan).expressions(), "the fused kernel")

    def lower(self, plan, schedule: FusedLoopSchedule) -> str:
        program, code = fused_program(plan.ir, self.form(plan), schedule, plan.summary)
        about = ("per unit, s_t = f(s_{t-1}, W s_{t-1}, o_t): the whole time loop in one "
                 "kernel (from backends/templates/fused_loop.py.jinja); the operands o and "
                 "the weights W are computed before it")
        forward = program.forward()
        return assemble(program, "fused_loop.py.jinja", textwrap.wrap(
            "Triton backend, fused loop: " + about, 88),
            forward,
            ["", *operands_import(forward),
             "from reclang.runtime.packing import pad_packed, unpad_packed"],
            slots={**code.slots(about), "schedule": schedule})


register(TritonLoop())
