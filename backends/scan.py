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

import torch

from reclang.ir import IR

from .sequential import INDENT, Program, py_name
from .torch_expr import ExprLowering, Place


def chunk_length(T: int) -> int:
    """C ≈ √T balances the C steps within chunks against the T / C steps across them."""
    return max(1, math.isqrt(T - 1) + 1) if T > 1 else 1


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


class TokenLowering(ExprLowering):
    """The loop body run on all B·T tokens at once: a sequence computed before the
    loop is read whole, flattened to [B·T, ...], instead of step by step."""

    def at_step(self, var: str) -> str:
        if var not in self.unbound:
            self.unbound[var] = self.names.fresh(f"_{var.lstrip('_')}_tokens")
        return self.unbound[var]


class ScanProgram(Program):
    """The sequential forward with its loop replaced: the loop body becomes a function
    of all tokens at once, evaluated from chosen states (0 and 1 for a and b; the
    basis vectors along the mixed axes for a dense a) and from the scanned previous
    states (for the outputs)."""

    Lowering = TokenLowering
    title, scan_function = "Scan", "linear_scan"

    def __init__(self, ir: IR, plan=None):
        super().__init__(ir)
        self.plan = plan
        structures = {st.name: st for st in plan.states} if plan is not None else {}
        self.mixed = {}  # state -> (its mixed axes, their dims in its [B, ...] layout)
        for d in ir.states:
            t = structures[d.name].transition if d.name in structures else None
            if t is not None and t.kind == "dense":
                axes = structures[d.name].axes
                self.mixed[d.name] = (t.mix_axes, tuple(axes.index(a) + 1 for a in t.mix_axes))

    def loop(self, first: str, blocks, outputs, unbound) -> list[str]:
        states = [py_name(d.name) for d in self.ir.states]
        every = {s: self.names.fresh(f"_{s}_all") for s in states}  # all steps of a state
        lines = [f"B, T = {first}.shape[:2]"] + blocks[Place.HOIST]
        if not states:  # a cell without state: every statement is hoisted, nothing scans
            return lines
        if unbound:
            lines.append("# the sequences the loop body reads, as B·T tokens")
        lines += [f"{tokens} = {var}.flatten(0, 1)" for var, tokens in unbound.items()]
        stepwise = [n for n, home in outputs if home == Place.LOOP]
        outs = ", ".join(f'"{n.arg}": {py_name(n.arg)}' for n in stepwise)
        lines += [f"def _tokens(B, {', '.join(states)}):",
                  INDENT + '"""The loop body on B tokens at once (here B = B·T)."""']
        lines += [INDENT + line for line in blocks[Place.LOOP]]
        new = "".join(f"{s}, " for s in states).rstrip(" ")  # `h,`; none for a stateless cell
        lines.append(INDENT + f"return {{{outs}}}, ({new})")
        filled = {fill: [f"{s}.new_full((), {fill}).expand(B * T, *{s}.shape[1:])"
                         for s in states] for fill in (0, 1)}  # expand: nothing is filled
        lines.append("# h' = a h + b: b is the step from 0")
        lines.append(f"_, _from0 = _tokens(B * T, {', '.join(filled[0])})")
        if len(self.mixed) < len(states):
            lines.append("# elementwise a: a + b is the step from 1")
            lines.append(f"_, _from1 = _tokens(B * T, {', '.join(filled[1])})")
        for k, s in enumerate(states):
            name = self.ir.states[k].name
            if name in self.mixed:
                lines += self.dense_block(k, s, filled[0], every[s])
                continue
            lines += [f"# all states of {name}",
                      f"_b = _from0[{k}].reshape(B, T, *{s}.shape[1:])",
                      f"_a = _from1[{k}].reshape(B, T, *{s}.shape[1:]) - _b",
                      f"{every[s]} = {self.scan_function}(_a, _b, {s})"]
        if stepwise:
            prev = [f"torch.cat([{s}[:, None], {every[s]}[:, :-1]], 1).flatten(0, 1)"
                    for s in states]
            lines.append("# the outputs of every step, from its previous states")
            lines.append(f"_outs, _ = _tokens(B * T, {', '.join(prev)})")
            lines += [f'{py_name(n.arg)} = _outs["{n.arg}"].unflatten(0, (B, T))'
                      for n in stepwise]
        lines += [f"{s} = {every[s]}[:, -1]" for s in states]
        return lines

    def dense_block(self, k: int, s: str, zeros: list[str], every: str) -> list[str]:
        """A state whose transition mixes some of its axes: the matrix column by column
        (the step from each basis vector along the mixed axes, minus b), then a dense
        scan in the layout with the mixed axes last and flattened."""
        d = self.ir.states[k]
        axes, dims = self.mixed[d.name]
        args = ", ".join("_e" if j == k else z for j, z in enumerate(zeros))
        seq_dims = tuple(x + 1 for x in dims)
        return [f"# all states of {d.name}: its transition mixes "
                f"{', '.join(axes)}, a matrix found from the basis "
                "vectors e",
                f"_a, _b = dense_transition(lambda _e: _tokens(B * T, {args})[1][{k}], "
                f"_from0[{k}], {dims})",
                f"{every} = dense_scan(_a.unflatten(0, (B, T)), _b.unflatten(0, (B, T)), "
                f"mixed_last({s}, {dims}))",
                f"{every} = from_mixed_last({every}, {seq_dims}, (B, T, *{s}.shape[1:]))"]

    def source(self) -> str:
        header = self.header([
            f"{self.title} backend: h' = a h + b elementwise, over time by {self.scan_function};",
            "the loop body of the sequential backend runs on all tokens at once."])
        names = [self.scan_function]
        if self.mixed:
            names += ["dense_scan", "dense_transition", "from_mixed_last", "mixed_last"]
        imports = ["import torch", "",
                   f"from reclang.backends.{self.__module__.rsplit('.', 1)[-1]} "
                   f"import {', '.join(names)}"]
        forward = self.function(
            "forward", f"Runs {self.ir.name} over whole sequences with a scan: inputs "
            "[B, T, ...], states are the initial ones; returns (outputs, final states).",
            step=False)
        return "\n".join(header + imports) + "\n\n\n" + forward + "\n\n\n" + \
            self.step_function() + "\n"


def generate(ir: IR, plan=None) -> str:
    """The generated source of the scan backend (forward and step)."""
    return ScanProgram(ir, plan).source()
