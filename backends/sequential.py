"""The sequential backend: a PyTorch loop over time. Runs every cell; the reference.

Recurrence: whatever the spec says, one step after another, t = 0 .. T-1.
Algorithm:  values that depend on no state (input projections, gates) are computed for
            all steps at once before the loop, as batched tensor ops; the loop computes
            only what depends on the state. Values that would be much larger than
            what they are computed from (an outer product k vᵀ over all steps) stay in
            the loop, so memory stays O(B·T·inputs + B·state).
Cost:       T sequential steps of O(state) work; the input projections are batched.
Numerics:   the module runs it in float32 for bf16/fp16 inputs (states in float32).

The generated module has two functions:
    forward(inputs..., states..., *, params...) -> (outputs, final states)
    step(inputs..., states..., *, params...)    -> (outputs, new states)   one step
"""

from __future__ import annotations

from reclang.codegen.loop import Program

from .base import Backend, register


class Sequential(Backend):
    name = "sequential"

    def lower(self, plan, schedule) -> str:
        return Program(plan.ir, schedule).source()


register(Sequential())
