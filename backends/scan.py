"""The scan backend: a chunked scan over time, for cells whose plan is `diag` or
`diag-lti` (every state updated elementwise, h_t = a_t ⊙ h_{t-1} + b_t).

Recurrence: h_t = a_t ⊙ h_{t-1} + b_t, t = 0 .. T-1, from the initial state h_{-1}.
Algorithm:  1. a_t and b_t for all steps at once, from the cell's own step function
               evaluated on all B·T tokens in one batch: b = step(h = 0) and
               a = step(h = 1) − step(h = 0) (exact in exact arithmetic, because the
               analyzer proved the update elementwise affine in h).
            2. `linear_scan`: time is cut into T / C chunks of C ≈ √T steps. Every
               chunk runs from a zero state, all chunks at once (C batched steps), and
               the products of its decays are taken by `cumprod`; the carries at the
               chunk boundaries follow in T / C small steps; one broadcast adds each
               carry, times the products, to its chunk. The backward pass is the same
               scan run in reverse on the gradients (g_t = ∂L/∂h_t + a_{t+1} g_{t+1}).
            3. The outputs: the step function once more on all tokens, with the
               previous states h_{t-1}, so that any readout (of the new or the previous
               state, pointwise or not) is computed exactly as the spec says.
Cost:       O(B·T·state) work and memory, about three times the loop's arithmetic, in
            2√T batched steps instead of T; plus three batched evaluations of the step.
Numerics:   only products of decays, never quotients or exponentials of cumulative
            sums: decays may be negative, complex or tiny (a product that underflows
            is 0, its correct limit). a is obtained by a difference, so its rounding
            error is about eps·|a + b|.
"""

from __future__ import annotations

import math

from reclang.codegen.scan import ScanProgram
from reclang.schedule import ScanSchedule

from .base import Backend, register

DENSE_SCAN_LIMIT = 64  # mixed values per state: the scan's work per step grows as N²


class Scan(Backend):
    name, forms, kind, schedules = "scan", ("diag", "diag-lti", "dense"), "diag", ScanSchedule

    def refusal(self, plan) -> str:
        """The form's Unfit, or a dense transition too large for the scan (its matrices
        cost N² per step)."""
        form = self.form(plan)
        for s in getattr(form, "states", ()):
            sizes = dict(zip(s.axes, plan.ir.decls[s.name].shape))
            n = math.prod(sizes[a] for a in s.mix_axes)
            if n > DENSE_SCAN_LIMIT:
                return (f"{plan.at(plan.structure(s.name))}: the transition of {s.name} mixes "
                        f"{n} values (along {', '.join(s.mix_axes)}); the dense scan "
                        f"multiplies {n}x{n} matrices at every step (limit "
                        f"{DENSE_SCAN_LIMIT}): use the sequential backend")
        return super().refusal(plan)

    def lower(self, plan, schedule: ScanSchedule) -> str:
        return ScanProgram(plan.ir, self.form(plan), schedule, plan.summary).source()


register(Scan())
