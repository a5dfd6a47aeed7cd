"""The chunk backend: the chunkwise-parallel form, for `mat-decay` and `dplr` plans.

Recurrence (every state, in the canonical layout [B, H, K, V]; operands derived from
the plan by reclang/analysis/operands.py):

    S_t = (diag(exp(w_t)) + Σ_r a_{t,r} b_{t,r}ᵀ) S_{t-1} + Σ_r k_{t,r} v_{t,r}ᵀ
    o_t = q_tᵀ S_{t-1}                (a readout of the new state is rewritten as one
                                       of the previous state plus the token's own term)

Algorithm (`chunk_affine`), with chunks of C steps and G the cumulative log decay
within a chunk (G_t inclusive, Gx_t = G_{t-1} exclusive):
    1. Decayed scores between the tokens of a chunk, for s < t:
           score(x, y)[t, s] = Σ_i x_t[i] y_s[i] exp(Gx_t[i] - G_s[i])
       The exponent is the decay between s and t, so it is ≤ 0 for decays ≤ 1: no
       exp(-cumsum) anywhere (strong decays underflow to 0 instead of overflowing).
       A scalar decay gives a C × C matrix per head; a key-wise decay is taken by
       halving the chunk (`_keywise`: two factors ≤ 1 across each boundary, matmuls).
    2. Without a low-rank part (mat-decay): the state at each chunk's end,
           S_end = exp(G_C) S_0 + Σ_s (k_s ⊙ exp(G_C - G_s)) v_sᵀ,
       passed from chunk to chunk by the scan backend's `linear_scan` (an elementwise
       linear recurrence over the T / C chunks: 2√(T/C) batched steps, with its
       hand-written reverse-scan backward), and the outputs
           o_t = (q_t ⊙ exp(Gx_t))ᵀ S_0 + Σ_{s<t} score(q, k)[t, s] v_s.
    3. With a low-rank part (dplr; Yang et al. 2024, the WY / UT form): the values
       y_t = b_tᵀ S_{t-1} solve a unit lower-triangular system within the chunk,
           (I - score(b, a)) Y = B̂ S_0 + score(b, k) V,      B̂_t = b_t ⊙ exp(Gx_t),
       so Y = W S_0 + U with W, U computed for all chunks at once; the chunk pass
       adds Σ_s (a_s ⊙ exp(G_C - G_s)) y_sᵀ to the state and the outputs add
       Σ_{s<t} score(q, a)[t, s] y_s.
Cost:       O(T·C·K + T·K·V) work per head in batched matmuls, plus the pass from
            chunk to chunk: a scan without a low-rank part, T / C small sequential
            steps (two matmuls each) with one.
Numerics:   exponents of decays are differences within a chunk (see 1); the
            triangular solve is exact for |score(b, a)| of order 1 (DeltaNet keys of
            norm ≤ 1, β ≤ 2). Gradients: a scalar decay without a low-rank part
            has a hand-written backward that recomputes the scores of each chunk
            (runtime/chunk_backward.py); the others by autograd (and the scan's).
            NaN and ±inf stay causal and a log decay of -inf is a decay of 0
            (`causal_pass`: a second run where an operand is not finite).
"""

from __future__ import annotations

from reclang.codegen.chunk import ChunkProgram
from reclang.schedule import ChunkSchedule

from .base import Backend, register


class Chunk(Backend):
    name, forms, kind, schedules = "chunk", ("mat-decay", "dplr"), "matrix", ChunkSchedule

    def condition(self, plan) -> str:
        return plan.unproven_decays()

    def lower(self, plan, schedule: ChunkSchedule) -> str:
        return ChunkProgram(plan.ir, self.form(plan), schedule, plan.summary).source()


register(Chunk())
