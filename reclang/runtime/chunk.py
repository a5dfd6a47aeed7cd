"""The chunkwise form of matrix-state recurrences (see backends/chunk.py for the
recurrence, the algorithm, its cost and its numerics), and the causal guard against
non-finite operands that the Triton matrix kernels share."""

from __future__ import annotations

import torch

from .chunk_backward import scalar_chunkwise
from .chunk_layout import flat, flat_rows, from_chunks, in_chunks, scalar_decays
from .scan import branches_on_data, linear_scan


def chunk_affine(w, a, b, k, v, q, h0, *, chunk: int, segment: int, a_over_k=None):
    """The chunkwise form of one state (`_chunkwise`) in chunks of `chunk` steps,
    causal for non-finite values too (`causal_pass`), over segments of `segment` steps
    (rounded down to whole chunks, at least one; the generated code passes its
    schedule's, reclang/schedule.py ChunkSchedule), each from the state the one before
    it ends in (the same recurrence): its temporaries then stay below the size from
    which malloc maps fresh, zeroed pages for every one (glibc: 32 MiB), which made time
    grow faster than T (DeltaNet's forward+backward: 7.9x from T = 4096 to 16384; 4.9x
    with segments, docs/benchmarks.md)."""
    def run(*operands):
        step = chunk * max(1, segment // chunk)
        n = -(-operands[0].shape[1] // step)
        # split, not x[:, t:t + step]: one backward for all segments, not a zero-filled
        # gradient of x's full size for each
        parts = zip(*([None] * n if x is None else x.split(step, 1) for x in operands))
        outs, h = [], h0
        for part in parts:
            out, h = _chunkwise(*part[:6], h, chunk, part[6])
            outs.append(out)
        return (None if outs[0] is None else torch.cat(outs, 1)), h
    return causal_pass(run, (w, a, b, k, v, q, a_over_k))


def causal_pass(run, operands, starts=None):
    """run(*operands) -> (outputs [B, T, ...] or None, final state) of a chunkwise form,
    operands (w, ...) [B, T, ...] or None, w the log decay first; `starts`: the offsets
    of sequences packed along T (cu_seqlens), None for a batch of whole ones.

    Within a chunk the matmuls weigh every step by scores that are 0 for later steps,
    and 0 · NaN = NaN: a NaN or ±inf in an operand would reach the outputs of earlier
    steps. Where there is one, the outputs up to each sequence's first such step come
    from a second run on the operands made finite (equal to them up to that step), the
    others and the final state from the operands as they are. A log decay of -inf (a
    decay of exactly 0) is first raised to LOG_ZERO, whose exp is 0 too: cumulative
    sums then stay finite (-inf - -inf would be NaN)."""
    w, *rest = operands  # w None: computed (and raised to LOG_ZERO) inside `run`
    w = torch.clamp(w, min=LOG_ZERO[w.dtype]) if w is not None and w.dtype in LOG_ZERO else w
    operands = (w, *rest)
    bad = torch.stack([_not_finite(x) for x in operands if x is not None]).any(0)
    out, last = run(*operands)
    # one synchronization, after the run is queued; where code cannot branch on data
    # (torch.compile, vmap) both runs are made and selected from: the same result
    if out is None or (branches_on_data(bad) and not bool(bad.any())):
        return out, last
    finite, _ = run(*(None if x is None else torch.where(torch.isfinite(x), x, 0)
                      for x in operands))
    seen = bad.cumsum(1)  # non-finite steps so far
    if starts is not None:  # ... in each packed sequence (a batch of one)
        first = starts[:-1].clamp(max=seen.shape[1] - 1)
        before = (seen - bad.long())[0, first]
        seen = seen - torch.repeat_interleave(before, starts[1:] - starts[:-1])[None]
    after = (seen > 0).reshape(*seen.shape, *[1] * (out.dim() - 2))
    return torch.where(after, out, finite), last


def _not_finite(x):
    """[B, T]: the steps where x [B, T, ...] holds a NaN or ±inf. Their sums do (IEEE:
    inf + finite = inf, inf - inf = NaN): one pass over x where isfinite and any took
    four (28% of mLSTM's forward). A sum of finite values that overflows flags its step
    too, which costs the second run, not exactness (its operands are the same there)."""
    wide = torch.promote_types(x.dtype, torch.float32)  # half sums overflow at 65504
    return ~torch.isfinite(x.flatten(2).sum(-1, dtype=wide))


# exp(LOG_ZERO) is 0 in the dtype (below its smallest subnormal): a decay of 0
LOG_ZERO = {torch.float16: -18.0, torch.bfloat16: -105.0, torch.float32: -105.0,
            torch.float64: -746.0}


def _chunkwise(w, a, b, k, v, q, h0, chunk: int, a_over_k=None):
    """The chunkwise form of one state (see the module docstring).

    w: [B, T, H, 1 or K] log decay; a, b: [B, T, R, H, K] or None; k: [B, T, Ri, H, K];
    v: [B, T, Ri, H, V]; q: [B, T, Rq, H, K] or None (readouts of the previous state);
    h0: [B, H, K, V]. Returns (o [B, T, Rq, H, V] or None, final state [B, H, K, V]).
    a_over_k [B, T, R, H, 1]: given when a_r = a_over_k_r k_r (the delta rule, R = Ri),
    so that the scores against a are those against k with scaled columns.
    """
    T = w.shape[1]
    C = min(chunk, T)
    if a is None and q is not None and w.shape[-1] == 1:  # saves no scores: recomputes
        return scalar_chunkwise(w, k, v, q, h0, C)
    w, a, b, k, v, q, a_over_k = in_chunks((w, a, b, k, v, q, a_over_k), C)
    if a_over_k is not None:  # [B, N, H, C, R, 1] -> a factor on the columns of scores
        columns = a_over_k[..., 0][..., None, None, :, :]
        against_a = lambda x, x_k: x_k * columns  # noqa: E731
    else:
        against_a = lambda x, x_k: _scores(x, a, Gx, G)  # noqa: E731
    G = torch.cumsum(w, 3)          # [B, N, H, C, Kw], inclusive
    Gx = G - w                      # exclusive: the decay up to the previous step
    G_end = G[..., -1:, :]          # [B, N, H, 1, Kw]
    to_end = lambda x: x * torch.exp(G_end - G)[..., None, :]  # noqa: E731  [.., C, R, K]
    from_start = lambda x: x * torch.exp(Gx)[..., None, :]     # noqa: E731
    v_rows = flat_rows(v)          # [.., C·Ri, V], copied once for both products
    kv_end = flat_rows(to_end(k)).mT @ v_rows                # [B, N, H, K, V]
    decay_end = torch.exp(G_end[..., 0, :])[..., None]        # [B, N, H, Kw, 1]
    if a is not None:
        b_k = _scores(b, k, Gx, G)
        tri = torch.eye(C * a.shape[4], dtype=w.dtype, device=w.device) - flat(
            against_a(b, b_k))
        # one solve for both right-hand sides: W (the start state's part) and U
        rhs = torch.cat([flat_rows(from_start(b)), flat(b_k) @ v_rows], -1)
        WU = torch.linalg.solve_triangular(tri, rhs, upper=False, unitriangular=True)
        W, U = WU[..., :b.shape[-1]], WU[..., b.shape[-1]:]
        a_end = flat_rows(to_end(a))
    if a is None:  # the state from chunk to chunk is an elementwise linear recurrence
        ends = linear_scan(decay_end, kv_end, h0)          # [B, N, H, K, V]
        # split, not ends[:, :-1] and ends[:, -1]: their backwards are zero tensors of
        # the full size each, filled in
        before, last = ends.split([ends.shape[1] - 1, 1], 1)
        S0, h = torch.cat([h0[:, None], before], 1), last[:, 0]
    else:  # with a low-rank part it mixes the key axis: chunk after chunk
        S0, ys, h = _low_rank_pass(W, U, decay_end, kv_end, a_end, h0)
    if q is None:
        return None, h
    q_k = _scores(q, k, Gx, G)
    out = flat_rows(from_start(q)) @ S0 + flat(q_k) @ v_rows
    if a is not None:
        out = out + flat(against_a(q, q_k)) @ torch.stack(ys, 1)
    Rq = q.shape[4]
    return from_chunks(out.unflatten(3, (C, Rq)), T), h


def _low_rank_pass(W, U, decay_end, kv_end, a_end, h0):
    """The state from chunk to chunk with a low-rank part (it mixes the key axis, so
    chunk after chunk): (the state where each chunk starts [B, N, H, K, V], the
    fed-back values y of every chunk, the final state)."""
    starts, ys, h = [], [], h0
    # split into chunks once: indexing x[:, n] in the loop would make autograd build
    # a gradient of x's full size for every chunk (O(N²) work in the backward pass)
    steps = zip(*(x.unbind(1) for x in (W, U, decay_end, kv_end, a_end.transpose(-1, -2))))
    for W_n, U_n, decay_n, kv_n, a_n in steps:
        starts.append(h)
        y = W_n @ h + U_n
        ys.append(y)
        h = decay_n * h + kv_n + a_n @ y
    return torch.stack(starts, 1), ys, h


def _scores(x, y, Gx, G):
    """score(x, y)[t, r, s, r'] = Σ_i x[t, r, i] y[s, r', i] exp(Gx_t[i] - G_s[i]), s < t.

    x: [B, N, H, C, Rx, K]; y: [B, N, H, C, Ry, K]; Gx, G: [B, N, H, C, 1 or K]."""
    C = G.shape[3]
    if G.shape[-1] == 1:
        # one matmul of the rows (t, a) and (s, b), contiguous: einsum permuted its
        # operands and its result around the same bmm (copies: 12% of mLSTM's forward)
        raw = (flat_rows(x) @ flat_rows(y).mT).unflatten(-1, (C, y.shape[-2]))
        return raw.unflatten(-3, (C, x.shape[-2])) * scalar_decays(Gx, G)[..., :, None, :, None]
    return _keywise(x, y, Gx, G)


def _keywise(x, y, Gx, G):
    """A key-wise score by halving. The chunk (padded to a power of two) is cut in two
    halves A, B, and for t in B, s in A, with E_A the cumulative decay at A's end,
        exp(Gx_t - G_s) = exp(Gx_t - E_A) · exp(E_A - G_s),
    two factors ≤ 1 (for decays ≤ 1): the scores of B against A are one matmul with no
    exponent that can overflow, whatever the decays. The scores within each half are
    found the same way, all blocks of one size at once: log2(C) levels, about the flops
    of one C × C matmul, no C × C × K tensor and no branch on the values (so that
    torch.compile traces it in one graph and vmap batches it).
    """
    C = G.shape[3]
    n = 1 << (C - 1).bit_length()
    if n != C:  # padded steps: no key, no value, no decay (finite exponents)
        def pad(t, fill):
            return torch.cat([t, fill.expand(*t.shape[:3], n - C, *t.shape[4:])], 3)
        x, y = pad(x, x.new_zeros(())), pad(y, y.new_zeros(()))
        Gx, G = pad(Gx, G[:, :, :, -1:]), pad(G, G[:, :, :, -1:])
    # the n / b diagonal blocks [b, Rx, b, Ry] of the scores, from b = 1 (no s < t)
    blocks = x.new_zeros((*G.shape[:3], n, 1, x.shape[-2], 1, y.shape[-2]))
    b = 1
    while b < n:
        end = _half(G, b, 0)[..., -1:, :]                           # E_A [.., 1, K]
        later = _half(x, b, 1) * torch.exp(_half(Gx, b, 1) - end)[..., None, :]
        earlier = _half(y, b, 0) * torch.exp(end - _half(G, b, 0))[..., None, :]
        cross = torch.einsum("...tai,...sbi->...tasb", later, earlier)
        pair = blocks.unflatten(3, (-1, 2))
        first, second = pair[:, :, :, :, 0], pair[:, :, :, :, 1]
        blocks = torch.cat([torch.cat([first, torch.zeros_like(first)], -2),
                            torch.cat([cross, second], -2)], -4)
        b *= 2
    return blocks[:, :, :, 0, :C, :, :C, :]


def _half(t, b: int, which: int):
    """[B, N, H, n, ...] -> the first (0) or second (1) halves of its blocks of 2b steps,
    [B, N, H, n / 2b, b, ...]."""
    return t.unflatten(3, (-1, 2, b))[:, :, :, :, which]


def check_log_decay(w: torch.Tensor, state: str) -> None:
    """A decay the analyzer could not prove positive must be, for its logarithm."""
    if torch.isnan(w).any():
        raise ValueError(f"the decay of {state} is not positive; the chunk backend "
                         "works with its logarithm")

