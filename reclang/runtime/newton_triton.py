"""The Newton iterations of a diagonal cell run by Triton kernels (the newton backend's
path on CUDA tensors; backends/templates/newton_scan.py.jinja has the kernels): the
loop around them, its convergence test and the sequential finish, as
reclang/runtime/newton.py does them for the PyTorch path, with the same tolerance and
the same report (`newton.last_report`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import newton

NO_VMAP = ("the newton backend does not run under torch.func.vmap: how many Newton "
           "iterations run depends on the values, which vmap cannot branch on; it solves "
           "every sequence of a batch [B, T, ...] at once, so give it the batch instead")


@dataclass(frozen=True)
class Settings:
    """The schedule's iteration settings, as the generated file holds them."""
    max_iter: int = 32
    tol: float | None = None     # None: tied to the dtype (newton.tolerance)
    damping: float = 0.0


def wanted(setting: bool | None, tensor: torch.Tensor) -> bool:
    """Whether forward runs the Triton kernels: as the schedule says, else (None) on
    CUDA tensors."""
    return tensor.is_cuda if setting is None else setting


def check_device(h0: torch.Tensor) -> None:
    if not (h0.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        raise RuntimeError("the newton backend's Triton kernels run on CUDA tensors (or on "
                           "the CPU under TRITON_INTERPRET=1); got tensors on "
                           f"{h0.device}")


def solve(settings: Settings, iterate, finish, h0: torch.Tensor, T: int) -> torch.Tensor:
    """All states [B, T, S] from h0 [B, S]. `iterate(old)` runs one Newton iteration:
    (the new iterate, per step the largest move and the largest value [T]);
    `finish(states, first)` runs the steps from `first` one by one, in place."""
    tol = settings.tol or newton.tolerance(h0.dtype)
    # the first guess: h_0 at every step (0 where h_0 is infinite: a running max from -inf)
    guess = torch.where(torch.isfinite(h0), h0, torch.zeros_like(h0))
    states = guess[:, None].expand(h0.shape[0], T, h0.shape[1]).contiguous()
    moved = torch.ones(T, dtype=torch.bool, device=h0.device)
    bad = torch.zeros_like(moved)
    iterations = 0
    while iterations < min(settings.max_iter, T) and bool(moved.any()):
        states, move, size = iterate(states)
        moved, bad = ~(move <= tol * (1 + size)), move == float("inf")
        iterations += 1
        if bool(bad.any()):
            break
    first = first_inexact(moved, bad, iterations)
    if first is not None:
        finish(states, first)
    newton.last_report = newton.Report(iterations, first is None, first, T)
    return states


def first_inexact(moved: torch.Tensor, bad: torch.Tensor, iterations: int) -> int | None:
    """The first step the sequential finish must compute, or None: after k iterations
    the first k steps are exact, unless a step is not finite (its move is inf: the
    kernel's mark, also where a finite move overflows, which only finishes earlier)."""
    T = moved.shape[0]
    first = max(int(moved.nonzero()[0]), iterations) if bool(moved.any()) else T
    if bool(bad.any()):
        first = min(first, int(bad.nonzero()[0]))
    return None if first >= T else first


def per_operand(d: torch.Tensor, div: int, mod: int) -> torch.Tensor:
    """∂L/∂o per channel [B, T, S] summed over the channels that read each element."""
    B, T, S = d.shape
    return d if (div, mod) == (1, S) else d.view(B, T, S // (div * mod), mod, div).sum((2, 4))
