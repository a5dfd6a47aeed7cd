"""The cpu backend's compiled loop as two torch operators, forward and backward, so that
torch sees one op where the kernel runs: torch.compile traces it (fullgraph, no graph
break), torch.func transforms it (grad, vjp, jacrev; vmap by a rule) and autograd runs
the generated backward. The kernel itself is C++ called through ctypes
(reclang/runtime/cpp.py), which none of those can look into.

    run = cpu_kernel(key, library, outputs=Y, state_of_product=[...])
    out, last = run(parts, consts, w, h0, starts, threads)

The operators are `reclang::<key>_forward` and `reclang::<key>_backward` (`key`: the
cell's name and the hash of its C++ source), registered once per process and shared by
every module of that kernel. Layouts are the kernel's (cpu_loop.cpp.jinja): parts
[B, T, k, HEADS, N] each (forward's operand tensors, read where they are, or a copy of a
broadcast one made in the operator; one of width 0 for a cell without operands, so that T
is known), consts [C, HEADS, N], w [J, HEADS, N, N],
h0 [S, B, HEADS, N], starts [B] int32 -> out [Y, B, T, HEADS, N], last [S, B, HEADS, N].
First derivatives only.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Callable

import torch
from torch import Tensor

from .cpu_buffers import empty

ENTRY_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_lock = threading.Lock()
_made: dict[str, Callable] = {}  # the operators' name -> run, once per process


def cpu_kernel(key: str, library: Callable[[], ctypes.CDLL], outputs: int,
               state_of_product: list[int]) -> Callable:
    """`run(parts, consts, w, h0, starts, threads) -> (out, last)` for the kernel `key`,
    whose library `library()` loads (compiled on the first call only); threads 0:
    torch.get_num_threads() at the call (in the operator: dynamo cannot trace it)."""
    name = re.sub(r"\W", "_", key)
    with _lock:
        if name not in _made:
            _made[name] = _autograd(*_operators(name, library, outputs), outputs,
                                    state_of_product)
        return _made[name]


def _pointers(*tensors: Tensor) -> list:
    return [ctypes.c_void_p(x.data_ptr()) for x in tensors]


def _dense(parts: list[Tensor]) -> list[Tensor]:
    """The parts as the kernel reads them, contiguous: a broadcast one (Mamba's Δ[d] over
    n) copied into a kept buffer (a fresh tensor's first write costs more than the copy)."""
    return [x if x.is_contiguous() else empty(x, tuple(x.shape)).copy_(x) for x in parts]


def _parts(parts: list[Tensor]):
    """A C array of the parts' data pointers (the kernel's `const T* const* parts`)."""
    return (ctypes.c_void_p * len(parts))(*(x.data_ptr() for x in parts))


def _new_empty(like: Tensor, shape: tuple) -> Tensor:
    return like.new_empty(shape)


def _forward_shapes(parts, h0, keep: int, outputs: int, new=_new_empty) -> tuple:
    """(out, last, hist): hist [S, B, keep, HEADS, N] the states the backward reads.
    `new`: the large ones' allocation (the kernel's: kept buffers, cpu_buffers.py)."""
    T, (S, B, HEADS, N) = parts[0].shape[1], h0.shape
    return (new(h0, (outputs, B, T, HEADS, N)), h0.new_empty((S, B, HEADS, N)),
            new(h0, (S, B, keep, HEADS, N)))


def _backward_shapes(parts, consts, w, hist, new=_new_empty) -> tuple:
    """(d_ops [B, T, O, HEADS, N]: the operands' gradients in one tensor, d_consts
    [C, B, HEADS, N] per sequence, d_r [J, B, T, HEADS, N] the products', d_first
    [S, B, HEADS, N] the initial states')."""
    T, (S, B, _, HEADS, N) = parts[0].shape[1], hist.shape
    width = sum(x.shape[2] for x in parts)  # O, the operands
    return (new(hist, (B, T, width, HEADS, N)), hist.new_empty((consts.shape[0], B, HEADS, N)),
            new(hist, (w.shape[0], B, T, HEADS, N)), hist.new_empty((S, B, HEADS, N)))


def _operators(name: str, library, outputs: int) -> tuple:
    """The forward and backward operators (their OpOverloads, which dynamo traces)."""
    def entry(kind: str, like: Tensor):
        return getattr(library(), f"{kind}_{ENTRY_SUFFIX[like.dtype]}")

    @torch.library.custom_op(f"reclang::{name}_forward", mutates_args=(), device_types="cpu")
    def forward(parts: list[Tensor], consts: Tensor, w: Tensor, h0: Tensor, starts: Tensor,
                keep: int, threads: int) -> tuple[Tensor, Tensor, Tensor]:
        out, _, hist = _forward_shapes(parts, h0, keep, outputs, empty)
        (T, B), wt = parts[0].shape[1::-1], w.transpose(-1, -2).contiguous()
        hist[:, :, 0] = h0
        parts = _dense(parts)
        entry("forward", h0)(_parts(parts), *_pointers(consts, wt, hist, out, starts),
                             ctypes.c_int64(T), ctypes.c_int64(B), ctypes.c_int64(keep),
                             ctypes.c_int(threads or torch.get_num_threads()))
        return out, hist[:, :, T % keep].clone(), hist

    @torch.library.custom_op(f"reclang::{name}_backward", mutates_args=(), device_types="cpu")
    def backward(parts: list[Tensor], consts: Tensor, w: Tensor, hist: Tensor, starts: Tensor,
                 d_out: Tensor, d_last: Tensor, threads: int
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        d_ops, d_consts, d_r, _ = _backward_shapes(parts, consts, w, hist, empty)
        d_first = d_last.clone(memory_format=torch.contiguous_format)  # as at T = 0
        (T, B), wt = parts[0].shape[1::-1], w.transpose(-1, -2).contiguous()
        # every tensor the kernel reads is held here until it returns (ctypes keeps none)
        d_out, d_last, parts = d_out.contiguous(), d_last.contiguous(), _dense(parts)
        entry("backward", hist)(_parts(parts), *_pointers(consts, w, wt, hist, starts),
                                ctypes.c_int64(T), ctypes.c_int64(B),
                                *_pointers(d_out, d_last, d_ops, d_consts, d_r, d_first),
                                ctypes.c_int(threads or torch.get_num_threads()))
        return d_ops, d_consts, d_r, d_first

    forward.register_fake(lambda parts, consts, w, h0, starts, keep, threads:
                          _forward_shapes(parts, h0, keep, outputs))
    backward.register_fake(lambda parts, consts, w, hist, *_: _backward_shapes(parts, consts,
                                                                              w, hist))
    for op in (forward, backward):
        op.register_vmap(_vmap_by_loop(op))
    return (getattr(torch.ops.reclang, f"{name}_forward").default,
            getattr(torch.ops.reclang, f"{name}_backward").default)


def _derivative(backward):
    """The backward operator in an autograd Function: under torch.func it gets plain
    tensors (a bare custom op meets the transforms' wrappers); it has no derivative."""

    class Derivative(torch.autograd.Function):
        """The backward operator on plain tensors under torch.func; it has no derivative."""
        generate_vmap_rule = True

        @staticmethod
        def forward(consts, w, hist, starts, d_out, d_last, threads, *parts):
            return backward(list(parts), consts, w, hist, starts, d_out, d_last, threads)

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, *grads):
            raise RuntimeError("the cpu backend's kernel has first derivatives only; for "
                               "higher ones use backend 'sequential' or 'scan'")

    return Derivative


def _autograd(forward, backward, outputs: int, state_of_product: list[int]) -> Callable:
    """run() of the operators, through autograd Functions in the setup_context form: so
    torch.func transforms them (a custom op's own register_autograd fails under
    torch.func.grad, torch 2.13)."""

    Derivative = _derivative(backward)

    class Kernel(torch.autograd.Function):
        generate_vmap_rule = True  # by the operators' vmap rules

        @staticmethod
        def forward(consts, w, h0, starts, keep, threads, *parts):
            return forward(list(parts), consts, w, h0, starts, keep, threads)

        @staticmethod
        def setup_context(ctx, inputs, output):
            consts, w, _, starts, _, ctx.threads, *parts = inputs
            ctx.mark_non_differentiable(output[2])
            ctx.save_for_backward(*parts, consts, w, output[2], starts)

        @staticmethod
        def backward(ctx, d_out, d_last, _d_hist):  # hist: for the backward only
            *parts, consts, w, hist, starts = ctx.saved_tensors
            T, (S, B, _, HEADS, N) = parts[0].shape[1], hist.shape
            if d_out is None:  # only the final states used
                d_out = hist.new_zeros((outputs, B, T, HEADS, N))
            if d_last is None:  # only the outputs used
                d_last = hist.new_zeros((S, B, HEADS, N))
            args = (consts, w, hist, starts, d_out, d_last, ctx.threads)
            if torch.compiler.is_compiling():  # traced: the operator itself
                d_ops, d_consts, d_r, d_first = backward(parts, *args)
            else:  # eager: in a Function, so that under torch.func it gets plain tensors
                d_ops, d_consts, d_r, d_first = Derivative.apply(*args, *parts)
            # ∂L/∂W_j[h, n, k] = Σ_{b, t} ∂L/∂r_j[b, t, h, n] s_j[b, t - 1, h, k]
            d_w = torch.einsum("jbthn,jbthk->jhnk", d_r, hist[state_of_product, :, :T])
            d_parts = d_ops.split([x.shape[2] for x in parts], dim=2)
            return d_consts.sum(1), d_w, d_first, None, None, None, *d_parts

    def run(parts, consts, w, h0, starts, threads):
        T = parts[0].shape[1]
        if torch.is_grad_enabled() and any(x.requires_grad for x in (*parts, consts, w, h0)):
            out, last, _ = Kernel.apply(consts, w, h0, starts, T + 1, threads, *parts)
        else:  # no backward: no Function (dynamo 2.13 mistraces one no input of which
            # requires grad), and of the states only those before and after a step
            out, last, _ = forward(parts, consts, w, h0, starts, min(T + 1, 2), threads)
        return out, last
    return run


def _vmap_by_loop(op) -> Callable:
    """A vmap rule for `op`: one call per vmapped item, the results stacked (the kernel
    takes no extra batch dimension: the items' weights may differ)."""
    def rule(info, in_dims, *args):
        def item(arg, dim, i):
            if isinstance(arg, list):
                return [item(x, d, i) for x, d in zip(arg, dim or [None] * len(arg))]
            return arg if dim is None else arg.select(dim, i)
        results = [op(*(item(a, d, i) for a, d in zip(args, in_dims)))
                   for i in range(info.batch_size)]
        stacked = tuple(torch.stack(list(r)) for r in zip(*results))
        return stacked, (0,) * len(stacked)
    return rule
