"""Linear scans over time, h_t = a_t h_{t-1} + b_t (elementwise, or a small dense a),
with a hand-written backward: the scan backend's algorithm (see backends/scan.py for
the lowering that calls them)."""

from __future__ import annotations

import torch


def chunk_length(T: int) -> int:
    """C ≈ √T (the least C with C² ≥ T) balances the C steps within chunks against the
    T / C steps across them. Under torch.compile with dynamic shapes T is symbolic, which
    math.isqrt refuses (dynamo traces it as an int): C by comparisons, which guard the
    trace (its loops over the chunk are unrolled for one C anyway); ~√T of them."""
    C = 1
    while C * C < T:
        C += 1
    return C


def _step(a: torch.Tensor, h: torch.Tensor, b: torch.Tensor, dense: bool):
    """a h + b: elementwise, or (dense) a matrix [..., N, N] times a vector [..., N]."""
    if not dense:
        return torch.addcmul(b, a, h)
    return torch.matmul(a, h.unsqueeze(-1)).squeeze(-1) + b


def _scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, C: int,
          reverse: bool = False, dense: bool = False) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t (reverse: h_t = a_t h_{t+1} + b_t) for b [B, T, *S] and
    a of b's shape (or [B, T, *S, N] when dense), one dtype, h0 [B, *S]; no autograd.
    The steps past the last whole chunk (fewer than C) run one by one: after the
    chunks, or before them in reverse. States are collected and stacked, never written
    into views of a buffer: torch.compile traces that in one graph, and torch.func's
    transforms batch it."""
    T = b.shape[1]
    n = T // C
    in_time = (lambda steps: list(steps)[::-1]) if reverse else list
    tail = in_time(range(n * C, T))

    def one_by_one(h):
        states = []
        for t in tail:
            h = _step(a[:, t], h, b[:, t], dense)
            states.append(h)
        return h, in_time(states)

    h, tail_states = one_by_one(h0) if reverse else (h0, None)
    chunks = []
    if n:
        a_c, b_c = a[:, :n * C].unflatten(1, (n, C)), b[:, :n * C].unflatten(1, (n, C))
        # 1. every chunk from a zero state (all chunks at once), and its decay product
        first, *rest = in_time(range(C))
        run, decay = b_c[:, :, first], a_c[:, :, first]
        for c in rest:
            run = _step(a_c[:, :, c], run, b_c[:, :, c], dense)
            decay = a_c[:, :, c] @ decay if dense else decay * a_c[:, :, c]
        # 2. the state entering every chunk, chunk after chunk
        entering = []
        for j in in_time(range(n)):
            entering.append(h)
            h = _step(decay[:, j], h, run[:, j], dense)
        # 3. every chunk again from the state entering it, all its states
        h_c, within = torch.stack(in_time(entering), 1), []
        for c in in_time(range(C)):
            h_c = _step(a_c[:, :, c], h_c, b_c[:, :, c], dense)
            within.append(h_c)
        chunks = [torch.stack(in_time(within), 2).flatten(1, 2)]
    if not reverse:
        _, tail_states = one_by_one(h)
    steps = [torch.stack(tail_states, 1)] if tail_states else []
    return torch.cat(chunks + steps, 1)


class _LinearScan(torch.autograd.Function):
    """The scan, with its backward written as the same scan in the other direction:
    for h_t = a_t h_{t-1} + b_t, g_t = ∂L/∂h_t + a_{t+1}ᴴ g_{t+1}, ∂L/∂b_t = g_t,
    ∂L/∂a_t = g_t h_{t-1}ᴴ, ∂L/∂h0 = a_0ᴴ g_0 (ᴴ: the conjugate, and for dense a also
    the transpose; the conjugates are torch's convention for complex tensors). No graph
    of the loop steps is kept; saved: a, h0 and the states. In the setup_context form,
    with forward and backward made of PyTorch ops only, so that torch.func (vmap, grad,
    jacrev) can run it and generate its vmap rule."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a, b, h0, C, reverse, dense):
        return _scan(a, b, h0, C, reverse, dense)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, _, h0, C, reverse, dense = inputs
        ctx.save_for_backward(a, h0, output)
        ctx.C, ctx.reverse, ctx.dense = C, reverse, dense

    @staticmethod
    def backward(ctx, grad):
        a, h0, states = ctx.saved_tensors
        dense = ctx.dense
        adjoint = a.mH if dense else a.conj()
        pad = torch.zeros_like(adjoint[:, :1])
        if ctx.reverse:  # flip the time axis in the formulas by swapping shift directions
            a_next = torch.cat([pad, adjoint[:, :-1]], 1)
            prev = torch.cat([states[:, 1:], h0.unsqueeze(1)], 1)
            first = -1
        else:
            a_next = torch.cat([adjoint[:, 1:], pad], 1)
            prev = torch.cat([h0.unsqueeze(1), states[:, :-1]], 1)
            first = 0
        g = _LinearScan.apply(a_next, grad.to(a.dtype), torch.zeros_like(h0), ctx.C,
                              not ctx.reverse, dense)
        if dense:
            grad_a = g.unsqueeze(-1) * prev.conj().unsqueeze(-2)
        else:
            grad_a = g * prev.conj()
        grad_h0 = _step(adjoint[:, first], g[:, first], torch.zeros_like(h0), dense)
        return grad_a, g, grad_h0, None, None, None


def branches_on_data(x: torch.Tensor) -> bool:
    """Whether code may branch on the values of `x` (`if bool(...)`): not in a graph that
    torch.compile traces, nor under a torch.func transform (vmap refuses it)."""
    from torch._C._functorch import is_functorch_wrapped_tensor

    return not (torch.compiler.is_compiling() or is_functorch_wrapped_tensor(x))


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor,
                chunk: int | None = None, reverse: bool = False) -> torch.Tensor:
    """All states of h_t = a_t ⊙ h_{t-1} + b_t, t = 0..T-1, from h0 (reverse: of
    h_t = a_t ⊙ h_{t+1} + b_t, t = T-1..0).

    a, b: [B, T, *S]; h0: [B, *S] (brought to one dtype and shape first). Returns
    [B, T, *S]. `chunk`: steps per chunk (default ≈ √T). Differentiable in a, b, h0,
    to any order (the backward pass is itself a scan).
    """
    return _scan_call(a, b, h0, chunk, reverse, dense=False)


def dense_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor,
               chunk: int | None = None, reverse: bool = False) -> torch.Tensor:
    """All states of h_t = a_t h_{t-1} + b_t with matrices a_t: a [B, T, *R, N, N],
    b [B, T, *R, N], h0 [B, *R, N] (R: axes the transition does not mix). As
    `linear_scan` otherwise; the work per step is N times larger."""
    return _scan_call(a, b, h0, chunk, reverse, dense=True)


def _scan_call(a, b, h0, chunk, reverse, dense):
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), h0.dtype)
    a, b = a.to(dtype), b.to(dtype)
    shape = torch.broadcast_shapes(a.shape[:-1] if dense else a.shape, b.shape)
    a = a.expand(*shape, a.shape[-1]) if dense else a.expand(shape)
    b = b.expand(shape)
    h0 = h0.to(dtype).expand(shape[:1] + shape[2:])
    if shape[1] == 0:
        return b.clone()
    return _LinearScan.apply(a, b, h0, chunk or chunk_length(shape[1]), reverse, dense)


def mixed_last(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """x with the dims a dense transition mixes moved last and flattened into one."""
    last = tuple(range(-len(dims), 0))
    return x.movedim(dims, last).flatten(-len(dims))


def from_mixed_last(x: torch.Tensor, dims: tuple[int, ...], shape) -> torch.Tensor:
    """The inverse of `mixed_last`, for a tensor of the given original shape."""
    last = tuple(range(-len(dims), 0))
    return x.unflatten(-1, [shape[d] for d in dims]).movedim(last, dims)


def dense_transition(update, b: torch.Tensor, dims: tuple[int, ...]):
    """The matrices a of an update h' = update(h) = a h + b that mixes the dims `dims`
    of its states [B·T, *S] (b = update(0)), column by column: a e_i = update(e_i) − b
    for the basis vectors e_i along those dims (the same e_i along the other dims,
    which the update does not mix). Returns a [B·T, *R, N, N] and b [B·T, *R, N] in
    the layout of `mixed_last`."""
    b_last = mixed_last(b, dims)
    eye = torch.eye(b_last.shape[-1], dtype=b.dtype, device=b.device)
    columns = [mixed_last(update(from_mixed_last(e.expand_as(b_last), dims, b.shape)), dims)
               - b_last for e in eye]
    return torch.stack(columns, -1), b_last

