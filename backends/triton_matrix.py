"""The triton backend for `mat-decay` and `dplr` cells: the chunk backend's program
(backends/chunk.py: the same operands w, a, b, k, v, q per state, the same epilogue)
with each state run by a kernel rendered from backends/templates/mat_recurrent.py.jinja
instead of chunk_affine:
Recurrence: S_t = (diag(exp(w_t)) + Σ_r a_{t,r} b_{t,r}ᵀ) S_{t-1} + Σ_r k_{t,r} v_{t,r}ᵀ,
            o_{t,r} = S_{t-1}ᵀ q_{t,r}.
Algorithm:  the recurrent form: one program per (sequence, head, tile of 32 values)
            keeps its [K, 32] tile of the state in registers for all T steps (the
            low-rank part reads bᵀ S over all keys, within the program); the backward
            runs the same kernel in reverse (dk, dv, da, dS_0) and forward again (dq,
            db), and the log decay's gradient is a reverse cumulative sum (no state
            stored).
Cost:       O(T·K·V) elementwise work per head, T dependent steps; reads each operand
            once per value tile. It runs low-rank parts of rank > 1 (DeltaProduct)
            and states with several input terms or readouts; the others run the
            chunk kernels below.
Numerics:   the carry is float32 at least; the transition is applied step by step, as
            in the sequential backend (no triangular solve, no exp of a cumulative sum).

States with one input term and one readout, and a low-rank part of rank 1 at most:
the chunk kernels of backends/templates/mat_chunk.py.jinja
(included in the same file), with the recurrent kernel's contract and autograd
Function:
Algorithm:  the chunkwise form. One kernel walks the chunks of each sequence and
            stores the state where each starts; two more compute the readouts of every
            chunk in parallel (over keys: the outputs and dv; over values: dk and dq),
            from that state and the decayed scores within the chunk. A delta rule's
            fed-back values u = W C_0 + U come from the WY form, W and U for all
            chunks in parallel. The backward is the same kernels on the gradients,
            time reversed, and again forward.
Cost:       O(T·C·K + T·K·V) per head, in matmuls; T / C dependent steps.
Numerics:   exponents are log decays between two steps of a chunk (≤ 0): key-wise
            decays use sub-chunks of 16 steps for that (the template's comment).
"""

from __future__ import annotations

from reclang.codegen.render import missing_dependency
from reclang.codegen.triton import TritonChunkProgram
from reclang.schedule import TritonMatrixSchedule

from .base import Backend, register


class TritonMatrix(Backend):
    name, forms, kind = "triton", ("mat-decay", "dplr"), "matrix"
    schedules = TritonMatrixSchedule

    def refusal(self, plan) -> str:
        return missing_dependency() or super().refusal(plan)

    def condition(self, plan) -> str:
        return plan.unproven_decays()

    def lower(self, plan, schedule: TritonMatrixSchedule) -> str:
        return TritonChunkProgram(plan.ir, self.form(plan), schedule, plan.summary).source()


register(TritonMatrix())
