"""What the prologue (reclang/codegen/prologue.py) and subscript reads call: time shifts
with a carried history, the step index, and gathers with zeros outside the tensor.

Layout: sequences [B, T, *dims]; a history [B, K, *dims] holds the last K values of a
lagged expression before the call, oldest first (zeros before the very start), so that
`extend` gives the sequence [B, K + T, *dims] from which every lag 0..K is a slice.
"""

from __future__ import annotations

import math

import torch


def extend(history: torch.Tensor, e, T: int) -> torch.Tensor:
    """The carried history followed by the T new values of `e` (a number, a tensor of
    the expression's dims, or [B, T, *dims]): [B, K + T, *dims]."""
    e = torch.as_tensor(e, dtype=history.dtype, device=history.device)
    return torch.cat([history, e.expand(history.shape[0], T, *history.shape[2:])], dim=1)


def shifted(extended: torch.Tensor, k: int, T: int) -> torch.Tensor:
    """lag(e, k) at every step: a view of the extended sequence, [B, T, *dims]."""
    start = extended.shape[1] - T - k
    return extended[:, start:start + T]


def window(extended: torch.Tensor, W: int, T: int) -> torch.Tensor:
    """lag(e, w) for w = 0 .. W-1, the offsets on a last axis: [B, T, *dims, W].
    `unfold` is a strided view of the sequence; the flip to offset order copies it
    W times (never per chunk or per step)."""
    start = extended.shape[1] - T - (W - 1)
    return extended[:, start:].unfold(1, W, 1).flip(-1)


def convolved(extended: torch.Tensor, weight, W: int, T: int) -> torch.Tensor:
    """Σ_w weight[..., w] · lag(e, w) for w = 0 .. W-1, [B, T, *dims]: a depthwise conv1d
    (one group per element of dims) over the last W - 1 + T values of the extended
    sequence, so the history is its left halo. `weight` broadcasts to [*dims, W]."""
    start = extended.shape[1] - T - (W - 1)
    seq = extended[:, start:]
    B, L, dims = seq.shape[0], seq.shape[1], seq.shape[2:]
    C = math.prod(dims)
    kernel = torch.as_tensor(weight, dtype=seq.dtype, device=seq.device)
    kernel = kernel.expand(*dims, W).reshape(C, 1, W).flip(-1)  # oldest first, as conv1d
    y = torch.nn.functional.conv1d(seq.reshape(B, L, C).transpose(1, 2), kernel, groups=C)
    return y.transpose(1, 2).reshape(B, T, *dims)


def history(extended: torch.Tensor, K: int, lengths: torch.Tensor | None) -> torch.Tensor:
    """The last K values before each sequence's end (its length with `lengths`, else
    the whole T): the history the next call continues from, [B, K, *dims]."""
    if lengths is None:
        return extended[:, extended.shape[1] - K:]
    rows = torch.arange(extended.shape[0], device=extended.device)[:, None]
    return extended[rows, lengths.to(extended.device)[:, None] + torch.arange(
        K, device=extended.device)]


def steps(counter: torch.Tensor, T: int) -> torch.Tensor:
    """The step index t of every step, [B, T], continuing each sequence's counter [B]."""
    return counter[:, None] + torch.arange(T, dtype=counter.dtype, device=counter.device)


def advanced(counter: torch.Tensor, T: int, lengths: torch.Tensor | None) -> torch.Tensor:
    """The counter after the call: T steps more, or each sequence's length."""
    return counter + (T if lengths is None else lengths.to(counter))


def gather(x: torch.Tensor, index, sizes: tuple[int, ...]) -> torch.Tensor:
    """A read with computed subscripts: `index(*grids)` gives, per trailing axis of x,
    an integer tensor (or int) over the result's axes of `sizes`; a subscript outside
    [0, size) reads 0. The result is x's leading axes followed by `sizes`."""
    grids = [torch.arange(n, device=x.device).view([-1 if a == b else 1
                                                    for b in range(len(sizes))])
             for a, n in enumerate(sizes)]
    subs = index(*grids)
    dims = x.shape[x.dim() - len(subs):]
    valid = torch.ones(sizes, dtype=torch.bool, device=x.device)
    picks = []
    for sub, n in zip(subs, dims):
        sub = torch.as_tensor(sub, device=x.device).expand(sizes)
        valid = valid & (sub >= 0) & (sub < n)
        picks.append(sub.clamp(0, n - 1))
    return torch.where(valid, x[(..., *picks)], torch.zeros((), dtype=x.dtype, device=x.device))
