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


def _scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, C: int,
          reverse: bool = False) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t (reverse: h_t = a_t h_{t+1} + b_t) for a, b [B, T, *S] of
    one dtype, h0 [B, *S]; no autograd. The steps past the last whole chunk (fewer than
    C) run one by one: after the chunks, or before them in reverse."""
    B, T, *S = a.shape
    n = T // C
    states = torch.empty_like(b)
    order = range(C - 1, -1, -1) if reverse else range(C)
    tail = range(T - 1, n * C - 1, -1) if reverse else range(n * C, T)

    def one_by_one(h):
        for t in tail:
            h = torch.addcmul(b[:, t], a[:, t], h, out=states[:, t])
        return h

    h = one_by_one(h0) if reverse else h0
    if n:
        a_c, b_c, states_c = (x[:, :n * C].view(B, n, C, *S) for x in (a, b, states))
        # 1. every chunk from a zero state (all chunks at once), and its decay product
        first, *rest = order
        run, decay = b_c[:, :, first].clone(), a_c[:, :, first].clone()
        for c in rest:
            torch.addcmul(b_c[:, :, c], a_c[:, :, c], run, out=run)
            decay.mul_(a_c[:, :, c])
        # 2. the state entering every chunk, chunk after chunk
        entering = a.new_empty((B, n, *S))
        for j in (range(n - 1, -1, -1) if reverse else range(n)):
            entering[:, j] = h
            h = torch.addcmul(run[:, j], decay[:, j], h)
        # 3. every chunk again from the state entering it, writing all its states
        h_c = entering
        for c in order:
            h_c = torch.addcmul(b_c[:, :, c], a_c[:, :, c], h_c, out=states_c[:, :, c])
    if not reverse:
        one_by_one(h)
    return states


class _LinearScan(torch.autograd.Function):
    """The scan, with its backward written as the same scan in the other direction:
    for h_t = a_t h_{t-1} + b_t, g_t = ∂L/∂h_t + conj(a_{t+1}) g_{t+1}, ∂L/∂b_t = g_t,
    ∂L/∂a_t = g_t conj(h_{t-1}), ∂L/∂h0 = conj(a_0) g_0 (conj: torch's convention for
    complex tensors). No graph of the loop steps is kept; saved: a, h0 and the states."""

    @staticmethod
    def forward(ctx, a, b, h0, C, reverse):
        states = _scan(a, b, h0, C, reverse)
        ctx.save_for_backward(a, h0, states)
        ctx.C, ctx.reverse = C, reverse
        return states

    @staticmethod
    def backward(ctx, grad):
        a, h0, states = ctx.saved_tensors
        if ctx.reverse:  # flip the time axis in the formulas by swapping shift directions
            a_next = torch.cat([torch.zeros_like(a[:, :1]), a[:, :-1]], 1).conj()
            prev = torch.cat([states[:, 1:], h0.unsqueeze(1)], 1)
            first = -1
        else:
            a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], 1).conj()
            prev = torch.cat([h0.unsqueeze(1), states[:, :-1]], 1)
            first = 0
        g = _LinearScan.apply(a_next, grad.to(a.dtype), torch.zeros_like(h0), ctx.C,
                              not ctx.reverse)
        return g * prev.conj(), g, g[:, first] * a[:, first].conj(), None, None


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor,
                chunk: int | None = None, reverse: bool = False) -> torch.Tensor:
    """All states of h_t = a_t ⊙ h_{t-1} + b_t, t = 0..T-1, from h0 (reverse: of
    h_t = a_t ⊙ h_{t+1} + b_t, t = T-1..0).

    a, b: [B, T, *S]; h0: [B, *S] (brought to one dtype and shape first). Returns
    [B, T, *S]. `chunk`: steps per chunk (default ≈ √T). Differentiable in a, b, h0,
    to any order (the backward pass is itself a scan).
    """
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), h0.dtype)
    a, b = torch.broadcast_tensors(a.to(dtype), b.to(dtype))
    h0 = h0.to(dtype).expand(a.shape[:1] + a.shape[2:])
    if a.shape[1] == 0:
        return a.clone()
    return _LinearScan.apply(a, b, h0, chunk or chunk_length(a.shape[1]), reverse)


class TokenLowering(ExprLowering):
    """The loop body run on all B·T tokens at once: a sequence computed before the
    loop is read whole, flattened to [B·T, ...], instead of step by step."""

    def at_step(self, var: str) -> str:
        if var not in self.unbound:
            self.unbound[var] = f"{var}_tokens"
        return self.unbound[var]


class ScanProgram(Program):
    """The sequential forward with its loop replaced: the loop body becomes a function
    of all tokens at once, evaluated from the states 0 and 1 (for a and b) and from the
    scanned previous states (for the outputs)."""

    Lowering = TokenLowering
    title, scan_function = "Scan", "linear_scan"

    def loop(self, first: str, blocks, outputs, unbound) -> list[str]:
        states = [py_name(d.name) for d in self.ir.states]
        lines = [f"B, T = {first}.shape[:2]"] + blocks[Place.HOIST]
        if unbound:
            lines.append("# the sequences the loop body reads, as B·T tokens")
        lines += [f"{tokens} = {var}.flatten(0, 1)" for var, tokens in unbound.items()]
        stepwise = [n for n, home in outputs if home == Place.LOOP]
        outs = ", ".join(f'"{n.arg}": {py_name(n.arg)}' for n in stepwise)
        lines += [f"def _tokens(B, {', '.join(states)}):",
                  INDENT + '"""The loop body on B tokens at once (here B = B·T)."""']
        lines += [INDENT + line for line in blocks[Place.LOOP]]
        lines.append(INDENT + f"return {{{outs}}}, ({', '.join(states)},)")
        lines.append("# h' = a h + b elementwise: b is the step from 0, a + b the step from 1")
        for value, fill in (("_from0", 0), ("_from1", 1)):  # expand: no memory is filled
            filled = ", ".join(f"{s}.new_full((), {fill}).expand(B * T, *{s}.shape[1:])"
                               for s in states)
            lines.append(f"_, {value} = _tokens(B * T, {filled})")
        for k, s in enumerate(states):
            lines += [f"# all states of {self.ir.states[k].name}",
                      f"_b = _from0[{k}].reshape(B, T, *{s}.shape[1:])",
                      f"_a = _from1[{k}].reshape(B, T, *{s}.shape[1:]) - _b",
                      f"_{s}_all = {self.scan_function}(_a, _b, {s})"]
        if stepwise:
            prev = [f"torch.cat([{s}[:, None], _{s}_all[:, :-1]], 1).flatten(0, 1)"
                    for s in states]
            lines.append("# the outputs of every step, from its previous states")
            lines.append(f"_outs, _ = _tokens(B * T, {', '.join(prev)})")
            lines += [f'{py_name(n.arg)} = _outs["{n.arg}"].unflatten(0, (B, T))'
                      for n in stepwise]
        lines += [f"{s} = _{s}_all[:, -1]" for s in states]
        return lines

    def source(self) -> str:
        header = self.header([
            f"{self.title} backend: h' = a h + b elementwise, over time by {self.scan_function};",
            "the loop body of the sequential backend runs on all tokens at once."])
        imports = ["import torch", "",
                   f"from reclang.backends.{self.__module__.rsplit('.', 1)[-1]} "
                   f"import {self.scan_function}"]
        forward = self.function(
            "forward", f"Runs {self.ir.name} over whole sequences with a scan: inputs "
            "[B, T, ...], states are the initial ones; returns (outputs, final states).",
            step=False)
        return "\n".join(header + imports) + "\n\n\n" + forward + "\n\n\n" + \
            self.step_function() + "\n"


def generate(ir: IR) -> str:
    """The generated source of the scan backend (forward and step)."""
    return ScanProgram(ir).source()
