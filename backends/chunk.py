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
            norm ≤ 1, β ≤ 2). Gradients by autograd (and the scan's own backward).
            NaN and ±inf stay causal and a log decay of -inf is a decay of 0
            (`causal_pass`: a second run where an operand is not finite).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from reclang.analysis.operands import ChunkOperands, ChunkState
from reclang.analysis.partition import Phase, phases
from reclang.ir import IR, Op

from .scan import branches_on_data, linear_scan
from .sequential import INDENT, Program, _broadcast
from .sympy_torch import SympyLowering
from .torch_expr import ATOM, Code, ExprLowering, Names, Place, align, comment, py_name, spec_origin

CHUNK = 64          # steps per chunk


# ---- the algorithm -------------------------------------------------------------------
def chunk_affine(w, a, b, k, v, q, h0, chunk: int = CHUNK, a_over_k=None):
    """The chunkwise form of one state (`_chunkwise`), causal for non-finite values too
    (`causal_pass`), over segments of SEGMENT steps, each from the state the one before
    it ends in (the same recurrence): its temporaries then stay below the size from
    which malloc maps fresh, zeroed pages for every one (glibc: 32 MiB), which made time
    grow faster than T (DeltaNet's forward+backward: 7.9x from T = 4096 to 16384; 4.9x
    with segments, docs/benchmarks.md)."""
    def run(*operands):
        step = chunk * max(1, SEGMENT // chunk)
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


SEGMENT = 1024      # steps per segment of chunk_affine (a multiple of the chunk)


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
    w, *rest = operands
    w = torch.clamp(w, min=LOG_ZERO[w.dtype]) if w.dtype in LOG_ZERO else w
    operands = (w, *rest)
    bad = torch.stack([(~torch.isfinite(x)).flatten(2).any(-1) for x in operands
                       if x is not None]).any(0)  # [B, T]: a step with a non-finite operand
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


# exp(LOG_ZERO) is 0 in the dtype (below its smallest subnormal): a decay of 0
LOG_ZERO = {torch.float16: -18.0, torch.bfloat16: -105.0, torch.float32: -105.0,
            torch.float64: -746.0}


def _chunkwise(w, a, b, k, v, q, h0, chunk: int = CHUNK, a_over_k=None):
    """The chunkwise form of one state (see the module docstring).

    w: [B, T, H, 1 or K] log decay; a, b: [B, T, R, H, K] or None; k: [B, T, Ri, H, K];
    v: [B, T, Ri, H, V]; q: [B, T, Rq, H, K] or None (readouts of the previous state);
    h0: [B, H, K, V]. Returns (o [B, T, Rq, H, V] or None, final state [B, H, K, V]).
    a_over_k [B, T, R, H, 1]: given when a_r = a_over_k_r k_r (the delta rule, R = Ri),
    so that the scores against a are those against k with scaled columns.
    """
    B, T = w.shape[:2]
    C = min(chunk, T)
    pad = (-T) % C
    if pad:  # steps with decay 1 and no input leave the state as it is
        w, a, b, k, v, q, a_over_k = (None if x is None else torch.cat(
            [x, x.new_zeros((B, pad, *x.shape[2:]))], 1) for x in (w, a, b, k, v, q, a_over_k))
    w, a, b, k, v, q, a_over_k = (None if x is None else _chunked(x, C)
                                  for x in (w, a, b, k, v, q, a_over_k))
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
    kv_end = torch.einsum("...crk,...crv->...kv", to_end(k), v)
    decay_end = torch.exp(G_end[..., 0, :])[..., None]        # [B, N, H, Kw, 1]
    if a is not None:
        b_k = _scores(b, k, Gx, G)
        tri = torch.eye(C * a.shape[4], dtype=w.dtype, device=w.device) - _flat(
            against_a(b, b_k))
        # one solve for both right-hand sides: W (the start state's part) and U
        rhs = torch.cat([_flat_rows(from_start(b)), _flat(b_k) @ _flat_rows(v)], -1)
        WU = torch.linalg.solve_triangular(tri, rhs, upper=False, unitriangular=True)
        W, U = WU[..., :b.shape[-1]], WU[..., b.shape[-1]:]
        a_end = _flat_rows(to_end(a))
    if a is None:  # the state from chunk to chunk is an elementwise linear recurrence
        ends = linear_scan(decay_end, kv_end, h0)          # [B, N, H, K, V]
        S0, h = torch.cat([h0[:, None], ends[:, :-1]], 1), ends[:, -1]
    else:  # with a low-rank part it mixes the key axis: chunk after chunk
        starts, ys, h = [], [], h0
        # split into chunks once: indexing x[:, n] in the loop would make autograd build
        # a gradient of x's full size for every chunk (O(N²) work in the backward pass)
        steps = zip(*(x.unbind(1) for x in (W, U, decay_end, kv_end, a_end.transpose(-1, -2))))
        for W_n, U_n, decay_n, kv_n, a_n in steps:
            starts.append(h)
            y = W_n @ h + U_n
            ys.append(y)
            h = decay_n * h + kv_n + a_n @ y
        S0 = torch.stack(starts, 1)  # [B, N, H, K, V]
    if q is None:
        return None, h
    q_k = _scores(q, k, Gx, G)
    out = _flat_rows(from_start(q)) @ S0 + _flat(q_k) @ _flat_rows(v)
    if a is not None:
        out = out + _flat(against_a(q, q_k)) @ torch.stack(ys, 1)
    Rq = q.shape[4]
    out = out.unflatten(3, (C, Rq)).permute(0, 1, 3, 4, 2, 5)  # [B, N, C, Rq, H, V]
    return out.flatten(1, 2)[:, :T], h


def _chunked(x, C):
    """[B, T, ..., H, X] -> [B, N, H, C, ..., X] (rank dims stay between C and X)."""
    x = x.unflatten(1, (-1, C))     # [B, N, C, (R,) H, X]
    if x.dim() == 5:
        return x.permute(0, 1, 3, 2, 4)
    return x.permute(0, 1, 4, 2, 3, 5)


def _scores(x, y, Gx, G):
    """score(x, y)[t, r, s, r'] = Σ_i x[t, r, i] y[s, r', i] exp(Gx_t[i] - G_s[i]), s < t.

    x: [B, N, H, C, Rx, K]; y: [B, N, H, C, Ry, K]; Gx, G: [B, N, H, C, 1 or K]."""
    C = G.shape[3]
    later = torch.ones(C, C, dtype=torch.bool, device=G.device).tril(-1)  # t > s
    if G.shape[-1] == 1:
        gap = (Gx - G.transpose(-1, -2)).masked_fill(~later, float("-inf"))  # [.., C, C]
        raw = torch.einsum("...tai,...sbi->...tasb", x, y)
        return raw * torch.exp(gap)[..., :, None, :, None]
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


def _flat(scores):
    """[.., C, Rx, C, Ry] -> [.., C·Rx, C·Ry]."""
    return scores.flatten(-2, -1).flatten(-3, -2)


def _flat_rows(x):
    """[.., C, R, X] -> [.., C·R, X]."""
    return x.flatten(-3, -2)


def operand(x, like: torch.Tensor, shape) -> torch.Tensor:
    """An operand as a full [B, T, *shape] tensor (numbers and params broadcast)."""
    B, T = like.shape[:2]
    if not torch.is_tensor(x):
        return like.new_full((B, T, *shape), x)
    return x.expand(B, T, *shape)


# ---- the generated program -----------------------------------------------------------
class EpilogueLowering(ExprLowering):
    """The outputs over all steps at once, with the linear parts given."""

    def __init__(self, ir, place, blocks, given: dict[int, str], names: Names | None = None):
        super().__init__(ir, place, blocks, names)
        self.given = given

    def code(self, i: int, at: Place) -> Code:
        if i in self.given:
            return Code(self.given[i], ATOM, self.ir.node(i).axes, dtype=self.ir.node(i).dtype)
        return super().code(i, at)


class ChunkProgram(Program):
    pass_function = "chunk_affine"  # what runs one state over the sequence
    how = "in chunks"
    packed = False  # whether forward takes cu_seqlens itself (else RecModule groups them)

    def __init__(self, ir: IR, operands: ChunkOperands, chunk: int | None = None):
        super().__init__(ir)
        self.ops = operands
        self.chunk = chunk
        self.sizes = {}
        for i in ir.stmts:
            node = ir.node(i)
            self.sizes.update(zip(node.axes, node.sizes))
        self.sympy = SympyLowering(ir, {})
        self.lines: list[str] = []

    # ---- operands
    def emit_operand(self, name: str, exprs, axes: tuple[str, ...], sizes, note: str):
        """`name = [B, T, len(exprs), *sizes]` from sympy expressions over `axes`, or
        `[B, T, *sizes]` for a single expression given alone."""
        self.lines.append(f"# {comment(note)}")
        single = not isinstance(exprs, (list, tuple))
        full = []
        for e in [exprs] if single else exprs:
            code = self.sympy.lower(e)
            text = code.text if code.const else align(code, axes).text
            full.append(f"operand({text}, _like, {_shape(sizes)})")
        if single:
            self.lines.append(f"{name} = {full[0]}")
        elif len(full) == 1:
            self.lines.append(f"{name} = {full[0]}[:, :, None]")
        else:
            self.lines.append(f"{name} = torch.stack([{', '.join(full)}], 2)")

    def state_block(self, s: ChunkState, queries: list) -> str:
        """Emits the operands and the chunk call of one state; returns the output var."""
        d = self.ir.decls[s.name]
        size = dict(zip(s.axes, d.shape))
        shared = [size[a] for a in s.shared]
        key, value = [size[a] for a in s.key], [size[a] for a in s.value]
        Hs, Kf, Vf = math.prod(shared), math.prod(key), math.prod(value)
        name = py_name(s.name)
        v = SimpleNamespace(**{x: self.names.fresh(f"_{name}_{x}")
                               for x in ("w", "a", "b", "k", "ak", "v", "q", "out", "last")})
        self.sympy.sizes.update(size)
        self.lines.append(f"# ---- {self.spec_line(s.name)}")
        hk = s.shared + s.key
        if s.log_decay == 0:
            self.lines.append(f"{v.w} = {py_name(self.ir.inputs[0].name)}.new_zeros("
                              f"(B, T, {Hs}, 1))  # no decay")
        else:
            axes = hk if s.decay_on_key else s.shared
            sz = shared + key if s.decay_on_key else shared
            self.emit_operand(v.w, s.log_decay, axes, sz,
                              f"log decay: {s.log_decay}")
            self.lines.append(f"{v.w} = {v.w}.reshape(B, T, {Hs}, "
                              f"{Kf if s.decay_on_key else 1})")
            if not s.positive:
                self.lines.append(f'check_log_decay({v.w}, "{s.name}")')
        # one shared and one key (value) axis is the layout already; else flatten them
        flat_k = f".reshape(B, T, -1, {Hs}, {Kf})" if (len(shared), len(key)) != (1, 1) else ""
        flat_v = f".reshape(B, T, -1, {Hs}, {Vf})" if (len(shared), len(value)) != (1, 1) \
            else ""
        if s.low_rank:
            for side, pos in (("a", 0), ("b", 1)):
                self.emit_operand(getattr(v, side), [p[pos] for p in s.low_rank], hk,
                                  shared + key, f"low-rank part: {side}_r = "
                                  + ", ".join(str(p[pos]) for p in s.low_rank))
                self.lines[-1] += flat_k
        self.emit_operand(v.k, [p[0] for p in s.inputs], hk, shared + key,
                          "input term, key side: " + ", ".join(str(p[0]) for p in s.inputs))
        self.lines[-1] += flat_k
        scale = _delta_rule_scale(s) if self.pass_function == "chunk_affine" else None
        if scale is not None:
            self.emit_operand(v.ak, [scale], s.shared, shared,
                              f"a = {scale} k: scores against a are those against k, scaled")
            self.lines[-1] += f".reshape(B, T, 1, {Hs}, 1)"
        self.emit_operand(v.v, [p[1] for p in s.inputs], s.shared + s.value,
                          shared + value,
                          "input term, value side: " + ", ".join(str(p[1]) for p in s.inputs))
        self.lines[-1] += flat_v
        q = "None"
        if queries:
            self.emit_operand(v.q, queries, hk, shared + key,
                              "readout queries (of the previous state): "
                              + ", ".join(str(x) for x in queries))
            self.lines[-1] += flat_k
            q = v.q
        order = [s.axes.index(a) + 1 for a in s.shared + s.key + s.value]
        moved = order != sorted(order)
        h0 = (f"{name}.permute(0, {', '.join(map(str, order))})" if moved else name) + \
            f".reshape(-1, {Hs}, {Kf}, {Vf})"  # -1: packed sequences have B = 1, N states
        lr = f"{v.a}, {v.b}" if s.low_rank else "None, None"
        chunk = ", cu_seqlens=cu_seqlens" if self.packed else f", chunk={self.chunk or CHUNK}"
        if scale is not None:
            chunk += f", a_over_k={v.ak}"
        self.lines.append(f"{v.out}, {v.last} = {self.pass_function}({v.w}, {lr}, "
                          f"{v.k}, {v.v}, {q}, {h0}{chunk})")
        back = [order.index(p + 1) + 1 for p in range(len(s.axes))]
        self.lines.append(f"{name} = {v.last}.reshape(-1, "
                          f"{', '.join(map(str, shared + key + value))})" +
                          (f".permute(0, {', '.join(map(str, back))})" if moved else ""))
        return v.out

    def spec_line(self, state: str) -> str:
        return spec_origin(self.ir, self.ir.update(state).loc.line)

    # ---- linear parts of the outputs
    def readouts(self) -> tuple[dict, dict]:
        """The queries of each state and, for each part and (state, axes, post), the
        index of its query. Terms of one part that share a state, node axes and post
        factor are summed into one query; the parts keep their own queries (two parts
        share one only when it is the same expression), because an output may combine
        them nonlinearly (o * o, an RMSNorm of o) and a sum would read as each."""
        per_state: dict = {}
        index = {}
        for n, part in enumerate(self.ops.parts):
            groups: dict = {}
            for t in part.terms:
                key = (t.state, t.axes, t.post)
                groups[key] = groups.get(key, 0) + t.query
            for (state, axes, post), query in groups.items():
                queries = per_state.setdefault(state, [])
                if query not in queries:
                    queries.append(query)
                index[(n, state, axes, post)] = queries.index(query)
        return per_state, index

    def part_block(self, n: int, outs: dict, index: dict, made: dict) -> str:
        part = self.ops.parts[n]
        node = self.ir.node(part.node)
        self.sympy.sizes.update(zip(node.axes, node.sizes))
        pieces = []
        seen = set()
        for t in part.terms:
            key = (t.state, t.axes, t.post)
            if key in seen:
                continue
            seen.add(key)
            s = next(x for x in self.ops.states if x.name == t.state)
            size = dict(zip(s.axes, self.ir.decls[s.name].shape))
            mapping = dict(t.axes)
            axes = tuple(mapping[a] for a in s.shared + s.value)
            sizes = ", ".join(str(size[a]) for a in s.shared + s.value)
            read = Code(f"{outs[t.state]}[:, :, {index[(n, *key)]}].reshape(B, T, {sizes})"
                        .replace(", )", ")"), ATOM, axes)
            if t.post != 1:
                read = self.sympy.product([self.sympy.lower(t.post), read])
            pieces.append(read)
        if part.free != 0:
            pieces.append(self.sympy.lower(part.free))
        codes = [p.text if p.const else align(p, node.axes).text for p in pieces]
        value = f"operand({' + '.join(codes)}, _like, {_shape(node.sizes)})"
        if value not in made:
            made[value] = self.names.fresh("_linear")
            self.lines.append(f"# linear in the states: {comment(self.ir.spec_line(node.loc))}")
            self.lines.append(f"{made[value]} = {value}")
        return made[value]

    # ---- assembly
    def forward(self) -> str:
        first = py_name(self.ir.inputs[0].name)
        self.names = Names(self.ir)
        self.lines = ["B, T = " + first + ".shape[:2]", f"_like = {first}",
                      "_dtype, _device = _like.dtype, _like.device"]
        per_state, index = self.readouts()
        outs = {s.name: self.state_block(s, per_state.get(s.name, []))
                for s in self.ops.states}
        self.given = {}
        made: dict[str, str] = {}  # value -> its var: o * o computes o once
        for n, part in enumerate(self.ops.parts):
            self.given[part.node] = self.part_block(n, outs, index, made)
        self.lines += self.epilogue()
        outputs = ", ".join(f'"{self.ir.node(i).arg}": {py_name(self.ir.node(i).arg)}'
                            for i in self.ir.stmts if self.ir.node(i).op == Op.OUT)
        states = ", ".join(f'"{d.name}": {py_name(d.name)}' for d in self.ir.states)
        self.lines.append(f"return {{{outputs}}}, {{{states}}}")
        doc = (f'"""Runs {self.ir.name} over whole sequences {self.how}: inputs [B, T, ...]; '
               'returns (outputs, final states)."""')
        signature = self.signature("forward")
        if self.packed:
            signature, doc = self.packed_signature(doc)
        return "\n".join([signature, INDENT + doc] +
                         [INDENT + line for line in self.lines])

    def epilogue(self) -> list[str]:
        """The output statements over all steps, reading the linear parts."""
        return epilogue(self.ir, self.given, names=self.names)

    def source(self) -> str:
        header = self.header([
            "Chunk backend: the chunkwise-parallel form (reclang.backends.chunk.chunk_affine);",
            "operands derived from the plan, in the layout [B, T, (rank,) shared, key/value].",
            "`step` is the cell's own step function."])
        imports = ["import torch", "",
                   "from reclang.backends.chunk import check_log_decay, chunk_affine, operand"]
        forward = self.forward()
        return "\n".join(header + imports) + "\n\n\n" + forward + "\n\n\n" + \
            self.step_function() + "\n"


def epilogue(ir: IR, given: dict[int, str], lowering=EpilogueLowering,
             names: Names | None = None) -> list[str]:
    """The output statements over all steps at once ([B, T, ...] values), with the
    nodes in `given` read from the named tensors instead of computed (`names`: those
    of the function it is part of)."""
    phase = phases(ir)
    place = {i: Place.ONCE if p == Phase.CONST else Place.HOIST for i, p in phase.items()}
    blocks = {p: [] for p in Place}
    lower = lowering(ir, place, blocks, given, names)
    needed = needed_statements(ir, given)
    for i in ir.stmts:
        node = ir.node(i)
        if i not in needed:
            continue
        place[i] = Place.HOIST
        value = lower.code(node.args[0], Place.HOIST)
        text = _broadcast(lower, value, node, Place.HOIST, place[node.args[0]])
        lower.emit(Place.HOIST, node, f"{py_name(node.arg)} = {text}")
    return blocks[Place.ONCE] + blocks[Place.HOIST]


def needed_statements(ir: IR, given: dict[int, str]) -> set[int]:
    """Statements the outputs need, not counting the nodes `given` replaces."""
    needed, stack = set(), [i for i in ir.stmts if ir.node(i).op == Op.OUT]
    while stack:
        i = stack.pop()
        node = ir.node(i)
        if i in given:
            continue
        if i in ir.stmts:
            if i in needed:
                continue
            needed.add(i)
        if node.op == Op.READ:
            stack.append(node.args[0])
        else:
            stack.extend(node.args)
    return needed


def check_log_decay(w: torch.Tensor, state: str) -> None:
    """A decay the analyzer could not prove positive must be, for its logarithm."""
    if torch.isnan(w).any():
        raise ValueError(f"the decay of {state} is not positive; the chunk backend "
                         "works with its logarithm")


def _delta_rule_scale(s: ChunkState):
    """a / k when the state has one low-rank term a bᵀ and one input term k vᵀ with a a
    multiple of k along the key axes (the delta rule: a = -β k, or -exp(g) β k), else
    None."""
    if len(s.low_rank) != 1 or len(s.inputs) != 1:
        return None
    ratio = s.low_rank[0][0] / s.inputs[0][0]  # sympy cancels the common factors
    if ratio == 0 or any(str(x) in s.key for x in ratio.free_symbols):
        return None
    return ratio


def _shape(sizes) -> str:
    """A shape as Python source: (), (4,), (4, 32)."""
    return f"({', '.join(map(str, sizes))}{',' if len(sizes) == 1 else ''})"


def generate(ir: IR, plan=None, chunk: int | None = None) -> str:
    """The generated source of the chunk backend (forward and step)."""
    from reclang.analysis.operands import chunk_operands
    from reclang.analysis.plan import make_plan

    plan = plan or make_plan(ir)
    return ChunkProgram(ir, chunk_operands(ir, plan.states), chunk).source()
