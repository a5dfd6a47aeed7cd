"""The scan backend: a chunked scan over time, for cells whose plan is `diag` or
`diag-lti` (every state updated elementwise, h_t = a_t ⊙ h_{t-1} + b_t).

Recurrence: h_t = a_t ⊙ h_{t-1} + b_t, t = 0 .. T-1, from the initial state h_{-1}.
Algorithm:  1. a_t and b_t for all steps at once, printed from the plan's affine normal
               form (the state's coefficient and its input term; reclang/codegen/
               scan.py). A dense transition, which that form does not print as a
               matrix, is found from the step on all B·T tokens at the basis vectors.
            2. `linear_scan`: time is cut into T / C chunks of C ≈ √T steps. Every
               chunk runs from a zero state, all chunks at once (C batched steps), and
               the products of its decays are taken by `cumprod`; the carries at the
               chunk boundaries follow in T / C small steps; one broadcast adds each
               carry, times the products, to its chunk. The backward pass is the same
               scan run in reverse on the gradients (g_t = ∂L/∂h_t + a_{t+1} g_{t+1}).
            3. The outputs on all steps at once, from the scanned states (and the
               previous ones where an output reads them), as the spec says.
Cost:       O(B·T·state) work and memory, about three times the loop's arithmetic, in
            2√T batched steps instead of T.
Numerics:   only products of decays, never quotients or exponentials of cumulative
            sums: decays may be negative, complex or tiny (a product that underflows
            is 0, its correct limit). a is its own expression: the loop's rounding.
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
