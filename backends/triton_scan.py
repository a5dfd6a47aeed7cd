"""The triton backend for `diag` and `diag-lti` cells: the gated scan (the gates computed
in the kernel) where it applies, else the diagonal scan below. The same backend name
runs matrix states (backends/triton_matrix.py) and nonlinear cells
(backends/triton_loop.py).

Recurrence: h_t = a_t ⊙ h_{t-1} + b_t, as in the scan backend (backends/scan.py).
Algorithm:  the scan backend's program (the loop body on all tokens gives a and b, and
            the outputs from the previous states) with its scan done by a Triton
            kernel rendered from the hand-written template
            backends/templates/diag_scan.py.jinja: one program per (sequence, block of
            channels) walks the T steps with the carry in registers; the backward pass
            is the same kernel run in reverse on the gradients.
Cost:       reads a and b and writes h once (memory-bound); T sequential steps per
            program, B·S/BLOCK programs in parallel.
Numerics:   the carry has the states' dtype (float32 for bf16/fp16 inputs).
The generated file holds the kernel, its autograd Function and the forward and step
functions: one file to read. It runs on CUDA tensors, or on the CPU under Triton's
interpreter (TRITON_INTERPRET=1, how the tests run it without a GPU). First
derivatives only (the backward is `once_differentiable`).
"""

# The gated scan, for cells whose gates have a Triton form:
# The triton backend's gated scan: diagonal cells whose gates the kernel computes.
#
# Recurrence: h_t = a_t ⊙ h_{t-1} + b_t with a = a(o_t, c), b = b(o_t, c) the cell's own
#             elementwise equations (sigmoid(W x + b), exp(-8 softplus(Λ) r), ...) of
#             operands o_t (inputs and sums such as W x: what is not elementwise) and
#             constants c (params alone); from the lane form with `gates`
#             (reclang/analysis/lanes.py), a = ∂f/∂h and b = f(h = 0) of the update f.
# Algorithm:  the operands for all steps at once in PyTorch, then the diagonal scan of
#             backends/templates/gated_scan.py.jinja with a and b printed into it: they
#             are computed in registers, tile by tile, instead of materialized. The
#             backward kernel computes a_{t+1} again from the operands and applies the
#             derivatives of a and b that sympy writes (no gate is stored).
#             The outputs follow from the states for all steps at once (the chunk
#             backend's epilogue): any readout of the new or the previous state.
# Cost:       forward, reads the operands once, each along its own axes of the state
#             (Mamba's Δ [B, T, D], B [B, T, N] for a state [D, N]), and writes the states
#             once (the scan backend also writes and reads a, b and every gate between
#             them); the backward reads the operands twice (steps t and t + 1) and the
#             states once.
# Numerics:   the carry and the equations in the states' dtype (float32 at least for
#             bf16/fp16 inputs); gates through the stable forms of gates.py.jinja.
# It applies when the cell has one real state of shape (heads..., units) whose update
# fits the lane form; other diagonal cells run the diagonal scan of a and b
# (below).

from __future__ import annotations

import textwrap

from reclang.analysis.forms import Unfit
from reclang.codegen.gated_scan import gated_program
from reclang.codegen.printable import triton_refusal
from reclang.codegen.render import assemble, missing_dependency
from reclang.codegen.triton import TritonScanProgram
from reclang.schedule import TritonScanSchedule

from .base import Backend, register


class TritonScan(Backend):
    name, forms, kind, schedules = "triton", ("diag", "diag-lti"), "diag", TritonScanSchedule

    def refusal(self, plan) -> str:
        return missing_dependency() or super().refusal(plan)

    def form(self, plan):
        """What `lower` prints: the gated form where the gated scan applies, else the
        diagonal one."""
        return plan.form_of("diag") if self.not_gated(plan) else plan.form_of("gated")

    def not_gated(self, plan) -> str:
        """Why the gated scan does not run the cell ("" when it does): its form's Unfit,
        or a function its kernel cannot print with its derivative."""
        gated = plan.form_of("gated")
        if isinstance(gated, Unfit):
            return gated.reason
        return triton_refusal(plan, gated.expressions(), "the gated scan")

    def lower(self, plan, schedule: TritonScanSchedule) -> str:
        """The gated scan (gates computed in the kernel) where it applies, else the
        diagonal scan of a and b, with the reason in its header."""
        why = self.not_gated(plan)
        if why:
            return TritonScanProgram(plan.ir, plan.form_of("diag"), schedule, plan.summary,
                                     why).source()
        about = ("h' = a h + b per channel, a and b the cell's equations of operands o and "
                 "constants c, computed in the kernel (from backends/templates/"
                 "gated_scan.py.jinja); the operands are computed before it")
        program, code = gated_program(plan.ir, self.form(plan), schedule, plan.summary)
        return assemble(program, "gated_scan.py.jinja", textwrap.wrap(
            "Triton backend, gated scan: " + about, 88), program.forward(),
            ["", program.operand_imports()],
            slots={**code.slots(about), "schedule": schedule})


register(TritonScan())
