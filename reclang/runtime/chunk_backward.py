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
and the log decays through every exponent: Gx_t in Δ[t, ·] and the queries' factor,
G_s in Δ[·, s] and the keys' factor, g in the keys' factor and exp(g); then
∂w_j = Σ_{t≥j} (∂G_t + ∂Gx_t) − ∂Gx_j (G = cumsum w, Gx = G − w).
Saved: the inputs and the chunk start states S_n (an output, so that the backward,
written in PyTorch ops, has its own derivatives: second derivatives, torch.func)."""

from __future__ import annotations

import torch

from .chunk_layout import flat_rows, from_chunks, in_chunks, scalar_decays
from .scan import linear_scan


def scalar_chunkwise(w, k, v, q, h0, C: int):
    """(o [B, T, Rq, H, V], final state [B, H, K, V]) for w [B, T, H, 1],
    k [B, T, Ri, H, K], v [B, T, Ri, H, V], q [B, T, Rq, H, K], h0 [B, H, K, V], in
    chunks of C ≤ T steps."""
    out, h, _ = ScalarDecayChunks.apply(w, k, v, q, h0, C)
    return out, h


class ScalarDecayChunks(torch.autograd.Function):
    """(o, final state, chunk start states [B, N, H, K, V]). In the setup_context form
    with a generated vmap rule, as runtime/scan.py's _LinearScan."""

    generate_vmap_rule = True

    @staticmethod
    def forward(w, k, v, q, h0, C):
        return _forward(w, k, v, q, h0, C)

    @staticmethod
    def setup_context(ctx, inputs, output):
        w, k, v, q, _, C = inputs
        ctx.save_for_backward(w, k, v, q, output[2])
        ctx.C = C
        ctx.set_materialize_grads(False)  # the start states' gradient is mostly unused

    @staticmethod
    def backward(ctx, d_out, d_h, d_starts):
        w, k, v, q, starts = ctx.saved_tensors
        return (*_backward(w, k, v, q, starts, (d_out, d_h, d_starts), ctx.C), None)


def _forward(w, k, v, q, h0, C):
    T, Rq = w.shape[1], q.shape[2]
    w, k, v, q = in_chunks((w, k, v, q), C)
    G = torch.cumsum(w, 3)          # [B, N, H, C, 1], inclusive
    Gx, G_end = G - w, G[..., -1:, :]
    v_rows = flat_rows(v)
    kv_end = flat_rows(k * torch.exp(G_end - G)[..., None, :]).mT @ v_rows
    ends = linear_scan(torch.exp(G_end[..., 0, :])[..., None], kv_end, h0)
    starts = torch.cat([h0[:, None], ends[:, :-1]], 1)
    scores = flat_rows(q) @ flat_rows(k).mT * _spread(scalar_decays(Gx, G), Rq, k.shape[4])
    out = flat_rows(q * torch.exp(Gx)[..., None, :]) @ starts + scores @ v_rows
    return from_chunks(out.unflatten(3, (-1, Rq)), T), ends[:, -1], starts


def _spread(decays, Rq: int, Ri: int):
    """[.., C, C] -> [.., C·Rq, C·Ri]: the decay of every pair of rows (t, r), (s, r')."""
    if Rq == Ri == 1:
        return decays
    return decays.repeat_interleave(Rq, -2).repeat_interleave(Ri, -1)


def _backward(w, k, v, q, starts, grads, C):
    """(∂w, ∂k, ∂v, ∂q, ∂h0) from the gradients of (o, final state, start states),
    each None where unused (see the module docstring)."""
    T, (Rq, Ri) = w.shape[1], (q.shape[2], k.shape[2])
    d_out, d_h, d_starts = grads
    if d_out is None:
        d_out = q.new_zeros((*q.shape[:-1], v.shape[-1]))
    d_h = torch.zeros_like(starts[:, 0]) if d_h is None else d_h
    w, k, v, q, d_out = in_chunks((w, k, v, q, d_out), C)
    G = torch.cumsum(w, 3)
    Gx, G_end = G - w, G[..., -1:, :]
    from_start, to_end = torch.exp(Gx)[..., None, :], torch.exp(G_end - G)[..., None, :]
    k_rows, v_rows, q_rows, do_rows = (flat_rows(x) for x in (k, v, q, d_out))
    kd, qd = flat_rows(k * to_end), flat_rows(q * from_start)
    decay_end = torch.exp(G_end[..., 0, :])[..., None]      # [B, N, H, 1, 1]
    d_S = qd.mT @ do_rows if d_starts is None else qd.mT @ do_rows + d_starts
    d_S = linear_scan(decay_end, d_S, d_h, reverse=True)    # ∂S_n
    d_h0, later = d_S.split([1, d_S.shape[1] - 1], 1)
    D = torch.cat([later, d_h[:, None]], 1)                 # ∂S_{n+1}
    decays = _spread(scalar_decays(Gx, G), Rq, Ri)
    raw = q_rows @ k_rows.mT                                # A
    d_raw = do_rows @ v_rows.mT * decays                    # ∂A = ∂P ⊙ Δ
    d_qd, d_kd = do_rows @ starts.mT, v_rows @ D.mT
    d_q = (d_raw @ k_rows).unflatten(3, (-1, Rq)) + d_qd.unflatten(3, (-1, Rq)) * from_start
    d_k = (d_raw.mT @ q_rows).unflatten(3, (-1, Ri)) + d_kd.unflatten(3, (-1, Ri)) * to_end
    d_v = (raw * decays).mT @ do_rows + kd @ D
    # ∂P ⊙ P = ∂A ⊙ A, summed over the ranks: the exponent of Δ[t, s] is Gx_t - G_s
    pairs = (d_raw * raw).unflatten(-1, (-1, Ri)).sum(-1).unflatten(-2, (-1, Rq)).sum(-2)
    e_q = (d_qd * qd).sum(-1).unflatten(-1, (-1, Rq)).sum(-1)    # [B, N, H, C]
    e_k = (d_kd * kd).sum(-1).unflatten(-1, (-1, Ri)).sum(-1)
    d_Gx = pairs.sum(-1) + e_q
    # g: in the keys' factor exp(g - G_s) and in exp(g) D_n S_n
    d_g = e_k.sum(-1, keepdim=True) + (D * starts).sum((-2, -1))[..., None] * decay_end[..., 0]
    d_G = torch.nn.functional.pad(d_g, (w.shape[3] - 1, 0)) - pairs.sum(-2) - e_k
    d_w = (_reverse_cumsum(d_G + d_Gx) - d_Gx)[..., None]
    return (from_chunks(d_w, T), from_chunks(d_k, T), from_chunks(d_v.unflatten(3, (-1, Ri)), T),
            from_chunks(d_q, T), d_h0[:, 0])


def _reverse_cumsum(x):
    """Σ_{t ≥ j} x_t along the last axis (flipped, not total − cumsum: no cancellation)."""
    return torch.flip(torch.cumsum(torch.flip(x, [-1]), -1), [-1])
