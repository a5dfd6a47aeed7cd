"""Newton's method over the whole sequence (DEER, Lim et al. 2024; ParaRNN, Danieli et
al. 2025): the states h_1 … h_T of h_t = f(h_{t-1}, x_t) as the root of one system of
equations, each Newton iteration a linear recurrence solved by a parallel scan
(reclang/runtime/scan.py). What the newton backend's generated code imports.

Iteration k, for all t at once (f: the core, the step less its state-free prelude,
on all B·T tokens, with the prelude's values s_t computed once per call):
    J_t = ∂f/∂h (h^k_{t-1}, s_t),    b_t = f(h^k_{t-1}, s_t) − J_t h^k_{t-1}
    h^{k+1}_t = J_t h^{k+1}_{t-1} + b_t                      (the scan, from h_0)
Step 0 of every iterate is exact (f(h_0, x_0)) and an exact prefix grows by at least one
step per iteration whatever J is, so after k iterations the first k steps are exact.
The iteration stops when no step moved by more than tol·(1 + |h_t|); after `max_iter`
the steps from the first that still moved are run one by one (`last_report` says so).

The Jacobian's layout (`Layout`): every state [.., *S_i] as [.., *R, m_i], R its first
`block_dims` axes (the blocks: the step never mixes them), the states' parts side by
side: J is [.., *R, m, m] (m = Σ m_i), or elementwise [.., *R, m] when m = 1 or when
`quasi` (quasi-DEER: the diagonal of J only; more iterations, O(m) per step). For a
cell with a lane form, f and J come from one call of the generated `linearized` (the
lane form's sympy derivatives, printed: reclang/codegen/newton_torch.py), assembled
here; otherwise J's rows are reverse-mode derivatives of f at the basis vectors e_j
(the same e_j in every block), `rows` of them per evaluation of f on as many copies
of the tokens. `damping` d scales J by 1 / (1 + d): between Newton (0) and Picard
iteration (J = 0, one exact step per iteration), for cells whose Newton iterates
overshoot; the exact prefix still grows.

Packed sequences (`cu_seqlens`, `Segments`) are one stream of tokens [1, total, ...]:
at every sequence's first token J = 0 and the previous state is the sequence's own
initial state, so one scan solves them all, and after k iterations the first k tokens
of every sequence are exact.

Backward (implicit differentiation, not through the iterations): with g_t = ∂L/∂h_t,
the adjoint λ_t = g_t + J_{t+1}ᵀ λ_{t+1} at the solution is the same scan in reverse
(or, `adjoint="loop"`, one vjp per step, when J is too large to hold), cut where a
sequence starts; then one vjp of f on all tokens with λ gives the gradients of the
inputs, the params and, through J_0ᵀ λ_0, the initial states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from .scan import dense_scan, linear_scan


@dataclass
class Report:
    """What the last solve did: Newton iterations, whether they converged, and the
    first step run one by one after them (None: none was)."""
    iterations: int
    converged: bool
    sequential_from: int | None
    steps: int


last_report: Report | None = None


@dataclass(frozen=True)
class Layout:
    """The states [.., *S_i] as one tensor [.., *R, m] (see the module's docstring)."""
    shapes: tuple[tuple[int, ...], ...]
    block_dims: int

    def sizes(self) -> list[int]:
        return [math.prod(s[self.block_dims:]) for s in self.shapes]

    def pack(self, states) -> torch.Tensor:
        d = self.block_dims
        parts = [s.reshape(*s.shape[:s.dim() - len(shape)], *shape[:d], -1)
                 for s, shape in zip(states, self.shapes)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)  # one state: a view

    def unpack(self, z: torch.Tensor) -> list[torch.Tensor]:
        lead = z.shape[:z.dim() - 1 - self.block_dims]
        return [part.reshape(*lead, *shape)
                for part, shape in zip(z.split(self.sizes(), -1), self.shapes)]


@dataclass(frozen=True)
class Solver:
    """The newton backend's settings for one cell, as the generated file holds them."""
    layout: Layout
    names: tuple[str, ...]          # the states, in the step's order
    max_iter: int = 32
    tol: float | None = None        # None: tied to the dtype (`tolerance`)
    quasi: bool = False
    damping: float = 0.0
    adjoint: str = "scan"           # "scan" | "loop"
    rows: int = 16                  # Jacobian rows per backward pass

    @torch.compiler.disable  # a graph break: the solve branches on values (convergence)
    def run(self, prelude, core, xs: tuple, h0: tuple, params: dict, linearized=None,
            cu_seqlens=None, outputs: dict | None = None):
        """(outputs, final states) of the cell over inputs [B, T, ...] from h0. The
        state-free values (`prelude`) are computed once, under autograd; Newton solves
        h_t = core(s_t, h_{t-1}) for the prelude's sequences s. `linearized` (printed
        from the lane form's derivatives, reclang/codegen/newton_torch.py) gives f and
        J in one pass; without it J's rows are found by reverse mode through `core`.
        `cu_seqlens` [N + 1]: N sequences packed in a batch of one, solved together,
        each from its own initial state (h0 [N, ...]). `outputs` {output: state}: every
        output is a new state (out y[n] = h[n]), so the outputs are the solution, and
        the core does not run again on all tokens for them."""
        B, T = xs[0].shape[:2]
        segments = Segments(None if cu_seqlens is None else cu_seqlens.to(xs[0].device))
        outs, seqs = prelude(*xs, **params)
        states = _Solve.apply(self, core, linearized, segments, tuple(params), len(seqs),
                              len(h0), *seqs, *h0, *params.values())
        if outputs is not None:  # every output is a new state: the solution itself
            named = dict(zip(self.names, states))
            return {y: named[s] for y, s in outputs.items()}, \
                {k: segments.last(v) for k, v in named.items()}
        prev = [segments.shifted(s0, s).flatten(0, 1) for s0, s in zip(h0, states)]
        more, new = core(*(s.flatten(0, 1) for s in seqs), *prev, **params)
        outs |= {k: v.unflatten(0, (B, T)) for k, v in more.items()}
        return outs, {k: segments.last(v.unflatten(0, (B, T))) for k, v in new.items()}


@dataclass(frozen=True)
class Segments:
    """Where the sequences of a solve [B, T, ...] start: each row of the batch at step 0
    (`starts` None), or sequences packed in a batch of one at the offsets `starts`
    (cu_seqlens[:-1]): there J = 0 and the previous state is the sequence's own initial
    state, so one scan over all tokens solves every sequence."""
    cu_seqlens: torch.Tensor | None

    @property
    def starts(self) -> torch.Tensor:
        return self.cu_seqlens[:-1]

    def initial(self, z0: torch.Tensor, T: int) -> torch.Tensor:
        """The initial state of every step's sequence, [B, T, ...]."""
        if self.cu_seqlens is None:
            return z0[:, None].expand(z0.shape[0], T, *z0.shape[1:])
        lengths = self.cu_seqlens[1:] - self.starts
        return z0.repeat_interleave(lengths, 0, output_size=T)[None]

    def shifted(self, z0: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        """The previous states of every step: Z one step later, a sequence's initial
        state at its first step."""
        prev = torch.cat([z0[:1, None] if self.cu_seqlens is not None else z0[:, None],
                          Z[:, :-1]], 1)
        if self.cu_seqlens is None:
            return prev
        return prev.index_copy(1, self.starts, z0[None].to(prev.dtype))

    def first(self, X: torch.Tensor) -> torch.Tensor:
        """X at every sequence's first step, [B or N, ...]."""
        return X[:, 0] if self.cu_seqlens is None else X[0, self.starts]

    def set_first(self, X: torch.Tensor, value) -> torch.Tensor:
        """X with `value` ([B or N, ...], or a number) at every first step, in place."""
        if self.cu_seqlens is None:
            X[:, 0] = value
        else:
            X[0, self.starts] = value
        return X

    def last(self, X: torch.Tensor) -> torch.Tensor:
        """X at every sequence's last step, [B or N, ...]: its final state."""
        return X[:, -1] if self.cu_seqlens is None else X[0, self.cu_seqlens[1:] - 1]

    def first_steps(self) -> list[int]:
        return [0] if self.cu_seqlens is None else self.starts.tolist()

    def entering(self, z0: torch.Tensor) -> dict[int, torch.Tensor]:
        """Step -> the state it starts from, where a sequence starts ([B, ...] rows)."""
        if self.cu_seqlens is None:
            return {0: z0}
        return {t: z0[k:k + 1] for k, t in enumerate(self.first_steps())}


def tolerance(dtype: torch.dtype) -> float:
    """eps^(3/4): 1.8e-12 in float64, 6.4e-6 in float32. Newton converges quadratically,
    so an iterate that moved by δ is within about δ² of the solution; the scan's own
    rounding (a few eps) stays well below it."""
    return torch.finfo(dtype).eps ** 0.75


class _Cell:
    """f on packed states: z [N, *R, m] -> f(z) [N, *R, m], inputs [N, ...] given."""

    def __init__(self, solver: Solver, step, param_names, params, linearized=None):
        self.solver, self.step, self.linearized = solver, step, linearized
        self.params = {k: p.detach() for k, p in zip(param_names, params)}

    def __call__(self, xs, z: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        layout = self.solver.layout
        _, new = self.step(*xs, *layout.unpack(z), **(self.params if params is None else params))
        return layout.pack([new[n] for n in self.solver.names])

    def linearize(self, xs, z: torch.Tensor, diagonal: bool):
        """f(z) and J = ∂f/∂z: [N, *R, m, m] (J[.., j, i] = ∂f_j/∂z_i), or its
        diagonal [N, *R, m] when `diagonal`: printed (`linearized`), else by reverse mode."""
        if self.linearized is None:
            return self.reverse_mode(xs, z, diagonal)
        layout = self.solver.layout
        given = [*xs, *layout.unpack(z)]
        with torch.no_grad():
            new, d_state, d_weight, weights = self.linearized(*given, **self.params)
        # the solver writes into J: a derivative that is an argument (∂(o s)/∂s = o) is
        # copied (the printed code computes elementwise: any other is a new tensor)
        d_state = [[d.clone() if any(d is x for x in given) else d for d in row]
                   for row in d_state]
        return layout.pack(list(new)), _assemble(layout, z, d_state, d_weight, weights,
                                                 diagonal)

    def reverse_mode(self, xs, z: torch.Tensor, diagonal: bool):
        """Row j of J is the reverse-mode derivative at the basis vector e_j (the same
        e_j in every block); `solver.rows` rows at a time, from one evaluation of f on
        that many copies of the tokens and one backward pass (on the CPU reverse mode is
        3-4x faster than forward mode, torch.func.jvp under vmap, and one pass per row
        costs an engine call each); torch.func.vjp, not torch.autograd.grad, so that it
        runs in the backward pass under torch.func.grad too."""
        m, N = z.shape[-1], z.shape[0]
        eye = torch.eye(m, dtype=z.dtype, device=z.device)
        value, rows = None, []
        for start in range(0, m, self.solver.rows):
            e = eye[start:start + self.solver.rows]
            k = len(e)
            copies = z.detach().expand(k, *z.shape).flatten(0, 1)
            tokens = [x.detach().expand(k, *x.shape).flatten(0, 1) for x in xs]
            seed = e.reshape(k, *[1] * (z.dim() - 1), m).expand(k, *z.shape).flatten(0, 1)
            with torch.enable_grad():
                out, pull = torch.func.vjp(lambda c, xs=tokens: self(xs, c), copies)
                grad = pull(seed)[0]
            value = out.detach().unflatten(0, (k, N))[0]
            grad = grad.unflatten(0, (k, N))
            rows += [grad[j, ..., start + j] if diagonal else grad[j] for j in range(k)]
        return value, torch.stack(rows, -1 if diagonal else -2)


def _assemble(layout: Layout, z, d_state, d_weight, weights, diagonal: bool) -> torch.Tensor:
    """J in the layout from the printed derivatives (reclang/codegen/newton_torch.py):
    block (i, j) of states i, j is diag(∂f_i/∂s_j) + Σ_k ∂f_i/∂r_k W_k over the weighted
    sums r_k = W_k s_j. One value per unit and state (no weights): J [N, *units, K, K]
    directly from the K² derivatives."""
    parts = [_full(d, z, layout, i) for i, row in enumerate(d_state) for d in row]
    K = len(d_state)
    if not weights:  # every part [N, *units, 1]
        if K == 1:
            return parts[0] if diagonal else parts[0].unsqueeze(-1)
        if diagonal:
            return torch.cat([parts[i * K + i] for i in range(K)], -1)
        return torch.cat(parts, -1).unflatten(-1, (K, K))
    rows = []
    for i in range(K):
        blocks = []
        for j in range(K):
            mixed = [(d_weight[i][k], w) for k, (w, state) in enumerate(weights) if state == j]
            if diagonal:
                if i == j:
                    blocks.append(parts[i * K + j] + sum(
                        _full(d, z, layout, i) * w.diagonal(0, -2, -1) for d, w in mixed))
                continue
            block = torch.diag_embed(parts[i * K + j])
            for d, w in mixed:
                block = block + _full(d, z, layout, i).unsqueeze(-1) * w
            blocks.append(block)
        rows.append(torch.cat(blocks, -1) if not diagonal else blocks[0])
    return torch.cat(rows, -1 if diagonal else -2)


def _full(d, z: torch.Tensor, layout: Layout, i: int) -> torch.Tensor:
    """A printed derivative of state i (on tokens, of params alone, or a number) as
    [N, *R, m_i]."""
    shape = (z.shape[0], *layout.shapes[i])
    d = torch.as_tensor(d, dtype=z.dtype, device=z.device)
    if d.shape != shape:  # a copy: the solver writes into J (the first steps' J = 0)
        d = d.expand(shape).clone()
    return d.reshape(*shape[:1 + layout.block_dims], -1)


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """The derivative of max and relu as the printed Jacobian writes it: 1/2 at a tie,
    as torch.maximum's gradient."""
    return torch.heaviside(x, x.new_full((), 0.5))


def tokens(value, like: torch.Tensor) -> torch.Tensor:
    """A printed value that reads no token (a number, params alone) on every token."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).expand(like.shape)


def _scan(J, b, z0, reverse=False):
    """z_t = J_t z_{t∓1} + b_t: elementwise when J has b's shape, else with matrices."""
    if J.shape == b.shape:
        return linear_scan(J, b, z0, reverse=reverse)
    return dense_scan(J, b, z0, reverse=reverse)


def _apply(J, z):
    return J * z if J.shape == z.shape else (J @ z.unsqueeze(-1)).squeeze(-1)


def solve(solver: Solver, cell: _Cell, xs, z0: torch.Tensor, segments: Segments) -> torch.Tensor:
    """All states Z [B, T, *R, m] (see the module's docstring)."""
    global last_report
    B, T = xs[0].shape[:2]
    flat = [x.flatten(0, 1) for x in xs]
    tol = solver.tol or tolerance(z0.dtype)
    diagonal = solver.quasi or z0.shape[-1] == 1
    # the first guess: h_0 at every step (0 where h_0 is infinite: a running max from -inf)
    Z = segments.initial(torch.where(torch.isfinite(z0), z0, torch.zeros_like(z0)), T)
    moved = torch.ones(T, dtype=torch.bool, device=z0.device)
    iterations = 0
    while iterations < min(solver.max_iter, T) and bool(moved.any()):
        prev = segments.shifted(z0, Z)
        F, J = cell.linearize(flat, prev.flatten(0, 1), diagonal)
        F, J = F.unflatten(0, (B, T)), J.unflatten(0, (B, T))
        if solver.damping:
            J = J / (1 + solver.damping)
        # b = F - J prev, then J = 0 and b = F at every first step, in place: b and J
        # are this iteration's own (J may share its memory with F, read before)
        b = torch.addcmul(F, J, prev, value=-1) if J.shape == F.shape else F - _apply(J, prev)
        segments.set_first(b, segments.first(F))
        new = _scan(segments.set_first(J, 0), b, torch.zeros_like(Z[:, 0]))
        moved, finite = _moved(new, Z, tol)
        Z, iterations = new, iterations + 1
        if not finite:
            break
    first = _first_inexact(Z, moved, iterations)
    if first is not None:
        Z = _finish(cell, xs, z0, Z, first, segments)
    last_report = Report(iterations, first is None, first, T)
    return Z


def _first_inexact(Z, moved, iterations: int) -> int | None:
    """The first step the sequential finish must compute, or None. After k iterations
    the first k steps are exact, whether they moved or not (the first k of every
    sequence, and so the first k of packed ones), unless a value is not finite: from
    the first such step on, the arithmetic of the scan proves nothing. Step 0 of every
    sequence is f(h_0) itself, which the linearization has computed exactly: with
    J = 0 there the scan restarts from it, so an infinite h_0 never meets J (0 · inf is
    NaN)."""
    first = max(int(moved.nonzero()[0]), iterations) if bool(moved.any()) else Z.shape[1]
    bad = (~torch.isfinite(Z)).flatten(2).any(-1).any(0).nonzero()
    if bad.numel():
        first = min(first, int(bad[0]))
    return None if first >= Z.shape[1] else first


def _moved(new, old, tol) -> tuple[torch.Tensor, bool]:
    """[T]: whether a step moved by more than tol·(1 + |h_t|) anywhere (or is not
    finite), and whether every value of `new` is finite. |x|'s largest value as the
    larger of max x and -min x: two reductions, no pass that writes |x|."""
    dims = [0] + list(range(2, new.dim()))
    delta = _largest_magnitude(new - old, dims)
    scale = 1 + _largest_magnitude(new, dims)  # NaN or inf where a value is
    return ~(delta <= tol * scale), bool(torch.isfinite(scale).all())


def _largest_magnitude(x: torch.Tensor, dims) -> torch.Tensor:
    return torch.maximum(x.amax(dims), -x.amin(dims))


def _finish(cell, xs, z0, Z, first: int, segments: Segments) -> torch.Tensor:
    """Z with the steps from `first` on computed one by one from Z_{first-1} (from a
    sequence's initial state where it starts)."""
    entering = segments.entering(z0)
    z = Z[:, first - 1] if first else None
    steps = []
    for t in range(first, Z.shape[1]):
        z = cell([x[:, t] for x in xs], entering.get(t, z))
        steps.append(z)
    return torch.cat([Z[:, :first], torch.stack(steps, 1)], 1)


class _Solve(torch.autograd.Function):
    """The states of every step [B, T, *S_i] per state; backward by the adjoint. In the
    setup_context form, which torch.func.grad (and functional_call) requires."""

    @staticmethod
    def forward(solver, step, linearized, segments, param_names, n_x, n_h, *tensors):
        xs, h0, params = tensors[:n_x], tensors[n_x:n_x + n_h], tensors[n_x + n_h:]
        cell = _Cell(solver, step, param_names, params, linearized)
        return tuple(solver.layout.unpack(solve(solver, cell, xs, solver.layout.pack(h0),
                                                segments)))

    @staticmethod
    def setup_context(ctx, inputs, output):
        solver, step, linearized, segments, param_names, n_x, n_h, *tensors = inputs
        ctx.solver, ctx.step, ctx.linearized, ctx.segments = solver, step, linearized, segments
        ctx.param_names, ctx.n_x, ctx.n_h = param_names, n_x, n_h
        ctx.save_for_backward(*tensors, *output)

    @staticmethod
    def vmap(info, in_dims, *args):
        raise RuntimeError(
            "the newton backend does not run under torch.func.vmap: how many Newton "
            "iterations run depends on the values, which vmap cannot branch on; it solves "
            "every sequence of a batch [B, T, ...] at once, so give it the batch instead")

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        n_x, n_h, solver = ctx.n_x, ctx.n_h, ctx.solver
        tensors, layout = ctx.saved_tensors, solver.layout
        xs, h0 = tensors[:n_x], tensors[n_x:n_x + n_h]
        params, Z = tensors[n_x + n_h:-n_h], layout.pack(tensors[-n_h:])
        g = layout.pack([torch.zeros_like(s) if d is None else d
                         for d, s in zip(grads, layout.unpack(Z))])
        prev = ctx.segments.shifted(layout.pack(h0), Z)
        cell = _Cell(solver, ctx.step, ctx.param_names, params, ctx.linearized)
        lam = _adjoint(solver, cell, xs, prev, g, ctx.segments)
        return (None,) * 7 + _vjp(ctx, cell, xs, h0, params, prev, lam)


def _adjoint(solver, cell, xs, prev, g, segments: Segments) -> torch.Tensor:
    """λ_t = g_t + J_{t+1}ᵀ λ_{t+1} at the solution, λ_{T-1} = g_{T-1}; cut where a
    sequence starts (J = 0 there, as in the forward)."""
    B, T = prev.shape[:2]
    if solver.adjoint == "loop":
        return _adjoint_loop(cell, xs, prev, g, segments)
    flat = [x.flatten(0, 1) for x in xs]
    _, J = cell.linearize(flat, prev.flatten(0, 1), prev.shape[-1] == 1)
    J = segments.set_first(J.unflatten(0, (B, T)), 0)
    Jt = J if J.shape == g.shape else J.mT
    A = torch.cat([Jt[:, 1:], torch.zeros_like(Jt[:, :1])], 1)
    return _scan(A, g, torch.zeros_like(g[:, 0]), reverse=True)


def _adjoint_loop(cell, xs, prev, g, segments: Segments) -> torch.Tensor:
    """The adjoint one step at a time: J_{t+1}ᵀ λ_{t+1} as a vjp of f at prev_{t+1}."""
    starts = set(segments.first_steps())
    lam = [g[:, -1]]
    for t in range(prev.shape[1] - 1, 0, -1):
        if t in starts:
            lam.append(g[:, t - 1])
            continue
        z = prev[:, t]
        _, vjp = torch.func.vjp(lambda y, t=t: cell([x[:, t] for x in xs], y), z)
        lam.append(g[:, t - 1] + vjp(lam[-1])[0])
    return torch.stack(lam[::-1], 1)


def _vjp(ctx, cell, xs, h0, params, prev, lam) -> tuple:
    """(∂f/∂x)ᵀλ per token, Σ_t (∂f/∂θ)ᵀλ_t and J_0ᵀλ_0 for h0, as the inputs came."""
    wanted = ctx.needs_input_grad[7:]
    B, T = prev.shape[:2]
    names = ctx.param_names
    flat = [x.flatten(0, 1) for x in xs]
    # true/false values of the prelude (a condition such as t % BT == 0) have no gradient
    real = [k for k, x in enumerate(flat) if x.is_floating_point() or x.is_complex()]

    def step(x, z, p):
        tokens = list(flat)
        for k, v in zip(real, x):
            tokens[k] = v
        return cell(tokens, z, dict(zip(names, p)))

    with torch.enable_grad():
        _, pull = torch.func.vjp(step, [flat[k] for k in real], prev.flatten(0, 1),
                                 list(params))
        g_real, gz, gp = pull(lam.flatten(0, 1))
    gx = [None] * len(flat)
    for k, d in zip(real, g_real):
        gx[k] = d.unflatten(0, (B, T))
    gh = [s.reshape(h.shape) for s, h in
          zip(ctx.solver.layout.unpack(ctx.segments.first(gz.unflatten(0, (B, T)))), h0)]
    grads = [*gx, *gh, *gp]
    return tuple(d if w else None for d, w in zip(grads, wanted))
