"""The chunkwise form with a scalar decay and no low-rank part (mLSTM, RetNet, Mamba-2,
linear attention: runtime/chunk.py `_chunkwise` with `a` None and w [.., 1]), with a
hand-written backward that recomputes the scores of each chunk instead of saving them.

Per chunk n (G the inclusive cumulative log decay within the chunk, Gx the exclusive
one, g = G at the chunk's end; rows (t, r) of a rank r, summed over ranks):
    S_{n+1} = exp(g) S_n + Σ_s (k_s exp(g - G_s)) v_sᵀ
    o_t     = (q_t exp(Gx_t))ᵀ S_n + Σ_{s<t} P[t, s] v_s,
              P[t, s] = A[t, s] Δ[t, s],  A = q kᵀ,  Δ[t, s] = exp(Gx_t - G_s)
The backward, from ∂o (do) and ∂S_N, with D_n = ∂S_{n+1} (the gradient of the state
the chunk ends in):
    ∂S_n = (q exp(Gx))ᵀ do_n + exp(g) D_n      (the chunk-to-chunk scan, reversed:
                                                runtime/scan.py linear_scan)
    ∂q = (do vᵀ ⊙ Δ) k + (do S_nᵀ) exp(Gx),   ∂k = (do vᵀ ⊙ Δ)ᵀ q + (v D_nᵀ) exp(g - G)
    ∂v = Pᵀ do + (k exp(g - G)) D_n,           ∂h0 = ∂S_0
and the log decays: o and S_{n+1} depend on them only through q exp(Gx), k exp(-G)
and exp(g) (products never formed, they can overflow), so ∂Gx_t = q_t·∂q_t,
∂G_s = -k_s·∂k_s, ∂g = Σ ∂S_{n+1} ⊙ S_{n+1}, and ∂w_j = Σ_{t≥j} (∂G_t + ∂Gx_t) − ∂Gx_j
(G = cumsum w, Gx = G − w; within the chunk).
Saved: the inputs (the chunked rows), the final state and the chunk start states S_n
(outputs, so that the backward, written in PyTorch ops, has its own derivatives:
second derivatives, torch.func); no [C, C] scores or decays."""

from __future__ import annotations

import torch

from .chunk_layout import flat_rows, from_chunks, in_chunks, scalar_decays
from .scan import linear_scan


def scalar_chunkwise(w, k, v, q, h0, C: int):
    """(o [B, T, Rq, H, V], final state [B, H, K, V]) for w [B, T, H, 1],
    k [B, T, Ri, H, K], v [B, T, Ri, H, V], q [B, T, Rq, H, K], h0 [B, H, K, V], in
    chunks of C ≤ T steps. The chunked rows are made here, under autograd, contiguous:
    the Function saves them, and no matmul of its forward or backward copies them (a
    matmul of [.., C·R, X] views in the input's layout copies its operand each time;
    of a rank of 1 the rows are such a view)."""
    T, Rq, Ri = w.shape[1], q.shape[2], k.shape[2]
    w, k, v, q = in_chunks((w, k, v, q), C)
    rows = (flat_rows(x).contiguous() for x in (k, v, q))
    out, h, _ = ScalarDecayChunks.apply(w, *rows, h0, Rq, Ri)
    return from_chunks(out.unflatten(3, (-1, Rq)), T), h


class ScalarDecayChunks(torch.autograd.Function):
    """(o, final state, chunk start states [B, N, H, K, V]) from w [B, N, H, C, 1] and
    the rows (t, r) of k, v, q [B, N, H, C·R, X], h0 [B, H, K, V], the ranks Rq, Ri. In
    the setup_context form with a generated vmap rule, as runtime/scan.py's _LinearScan."""

    generate_vmap_rule = True

    @staticmethod
    def forward(w, k, v, q, h0, Rq, Ri):
        return _forward(w, k, v, q, h0, Rq, Ri)

    @staticmethod
    def setup_context(ctx, inputs, output):
        w, k, v, q, _, Rq, Ri = inputs
        ctx.save_for_backward(w, k, v, q, output[1], output[2])
        ctx.ranks = Rq, Ri
        ctx.set_materialize_grads(False)  # the start states' gradient is mostly unused

    @staticmethod
    def backward(ctx, d_out, d_h, d_starts):
        w, k, v, q, h, starts = ctx.saved_tensors
        grads = _backward(w, k, v, q, h, starts, (d_out, d_h, d_starts), *ctx.ranks)
        return (*grads, None, None)


def _forward(w, k, v, q, h0, Rq, Ri):
    G = torch.cumsum(w, 3)          # [B, N, H, C, 1], inclusive
    Gx, G_end = G - w, G[..., -1:, :]
    kv_end = _per_step(k, torch.exp(G_end - G), Ri).mT @ v
    ends = linear_scan(torch.exp(G_end[..., 0, :])[..., None], kv_end, h0)
    starts = torch.cat([h0[:, None], ends[:, :-1]], 1)
    scores = q @ k.mT * _spread(scalar_decays(Gx, G), Rq, Ri)
    out = _per_step(q, torch.exp(Gx), Rq) @ starts + scores @ v
    return out, ends[:, -1], starts


def _per_step(rows, factor, R: int):
    """rows [.., C·R, X] times factor [.., C, 1], the same for the R rows of a step."""
    return (rows.unflatten(-2, (-1, R)) * factor[..., None, :]).flatten(-3, -2)


def _spread(decays, Rq: int, Ri: int):
    """[.., C, C] -> [.., C·Rq, C·Ri]: the decay of every pair of rows (t, r), (s, r')."""
    if Rq == Ri == 1:
        return decays
    return decays.repeat_interleave(Rq, -2).repeat_interleave(Ri, -1)


def _backward(w, k, v, q, h, starts, grads, Rq, Ri):
    """(∂w, ∂k, ∂v, ∂q, ∂h0) from the gradients of (o, final state, start states),
    each None where unused (see the module docstring)."""
    d_out, d_h, d_starts = grads
    # contiguous once: it is an operand of five matmuls
    d_out = q.new_zeros((*q.shape[:-1], v.shape[-1])) if d_out is None else d_out.contiguous()
    d_h = torch.zeros_like(h) if d_h is None else d_h
    G = torch.cumsum(w, 3)
    Gx, G_end = G - w, G[..., -1:, :]
    from_start, to_end = torch.exp(Gx), torch.exp(G_end - G)
    decay_end = torch.exp(G_end[..., 0, :])[..., None]      # [B, N, H, 1, 1]
    d_S = _per_step(q, from_start, Rq).mT @ d_out
    d_S = linear_scan(decay_end, d_S if d_starts is None else d_S + d_starts, d_h,
                      reverse=True)                         # ∂S_n
    d_h0, later = d_S.split([1, d_S.shape[1] - 1], 1)
    D = torch.cat([later, d_h[:, None]], 1)                 # ∂S_{n+1}
    decays = _spread(scalar_decays(Gx, G), Rq, Ri)
    d_raw = d_out @ v.mT * decays                           # ∂A = ∂P ⊙ Δ
    d_q = d_raw @ k + _per_step(d_out @ starts.mT, from_start, Rq)
    d_k = d_raw.mT @ q + _per_step(v @ D.mT, to_end, Ri)
    d_v = (q @ k.mT * decays).mT @ d_out + _per_step(k, to_end, Ri) @ D
    # the log decays: o and S_{n+1} are functions of q exp(Gx), k exp(-G) and exp(g)
    # (the products' exps never formed), so ∂Gx_t = q_t·∂q_t, ∂G_s = -k_s·∂k_s and
    # ∂g = Σ ∂S_{n+1} ⊙ S_{n+1}
    d_Gx = _step_sums(q * d_q, Rq)
    ends = torch.cat([starts[:, 1:], h[:, None]], 1)
    d_g = (D * ends).sum((-2, -1))[..., None]               # [B, N, H, 1]
    d_G = torch.nn.functional.pad(d_g, (w.shape[3] - 1, 0)) - _step_sums(k * d_k, Ri)
    d_w = (_reverse_cumsum(d_G + d_Gx) - d_Gx)[..., None]
    return d_w, d_k, d_v, d_q, d_h0[:, 0]


def _step_sums(x, R: int):
    """[.., C·R, X] -> [.., C]: the sum over a step's rows and X."""
    return x.sum(-1).unflatten(-1, (-1, R)).sum(-1)


def _reverse_cumsum(x):
    """Σ_{t ≥ j} x_t along the last axis (flipped, not total − cumsum: no cancellation)."""
    return torch.flip(torch.cumsum(torch.flip(x, [-1]), -1), [-1])
