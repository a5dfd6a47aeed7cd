"""The triton backend for `nonlinear` cells (LSTM, GRU, sLSTM, Elman...): one fused kernel
runs the whole time loop; see reclang/codegen/fused_loop.py for the recurrence, the
algorithm, its cost and its numerics.
"""

from __future__ import annotations

import textwrap

from reclang.analysis.lanes import Unsupported
from reclang.codegen.fused_loop import fused_program
from reclang.codegen.render import assemble, missing_dependency

from .base import Backend, register


class TritonLoop(Backend):
    name, forms = "triton", ("nonlinear",)

    def refusal(self, plan) -> str:
        """Why the fused kernel cannot run the cell ("" when it can): its lowering, with
        the step and its derivatives printed."""
        if missing_dependency():
            return missing_dependency()
        try:
            _, code = fused_program(plan.ir, plan)
            code.forward(), code.backward()
        except Unsupported as err:
            return str(err)
        except NotImplementedError as err:  # the printer's: a function it has no form for
            return f"{plan.file}: {err}"
        return ""

    def lower(self, plan, schedule) -> str:
        program, code = fused_program(plan.ir, plan)
        about = ("per unit, s_t = f(s_{t-1}, W s_{t-1}, o_t): the whole time loop in one "
                 "kernel (from backends/templates/fused_loop.py.jinja); the operands o and "
                 "the weights W are computed before it")
        return assemble(program, "fused_loop.py.jinja", textwrap.wrap(
            "Triton backend, fused loop: " + about, 88),
            program.forward(),
            ["", "from reclang.runtime.operands import constant, operand",
             "from reclang.runtime.packing import pad_packed, unpad_packed"],
            slots=code.slots(about))


register(TritonLoop())
