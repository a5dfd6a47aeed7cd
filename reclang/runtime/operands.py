"""Operands broadcast to the shapes the generated kernels and chunk passes take."""

from __future__ import annotations

import torch


def operand(x, like: torch.Tensor, shape) -> torch.Tensor:
    """An operand as a full [B, T, *shape] tensor (numbers and params broadcast)."""
    B, T = like.shape[:2]
    if not torch.is_tensor(x):
        return like.new_full((B, T, *shape), x)
    return x.expand(B, T, *shape)


def constant(x, like, shape):
    """A value of params alone broadcast to `shape`, in the dtype of `like`."""
    import torch

    if not torch.is_tensor(x):
        return like.new_full(shape, x)
    return x.to(like.dtype).expand(shape)

