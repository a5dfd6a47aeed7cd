"""The layouts of the chunkwise form (runtime/chunk.py): sequences [B, T, ..., H, X]
cut into chunks [B, N, H, C, ..., X] and back, flattened rows, and the scalar decays
between the steps of a chunk. Shared by its forward and its hand-written backward
(runtime/chunk_backward.py)."""

from __future__ import annotations

import torch


def in_chunks(operands, C: int):
    """The operands (None stays None) padded to whole chunks of C steps, with decay 1
    and no input (the state stays as it is), as [B, N, H, C, ..., X]."""
    B, T = next(x for x in operands if x is not None).shape[:2]
    pad = (-T) % C
    return tuple(None if x is None else _chunked(torch.cat(
        [x, x.new_zeros((B, pad, *x.shape[2:]))], 1) if pad else x, C) for x in operands)


def _chunked(x, C):
    """[B, T, ..., H, X] -> [B, N, H, C, ..., X] (rank dims stay between C and X)."""
    x = x.unflatten(1, (-1, C))     # [B, N, C, (R,) H, X]
    if x.dim() == 5:
        return x.permute(0, 1, 3, 2, 4)
    return x.permute(0, 1, 4, 2, 3, 5)


def from_chunks(x, T: int):
    """The inverse of `in_chunks`: [B, N, H, C, ..., X] -> [B, T, ..., H, X], the
    padded steps dropped."""
    if x.dim() == 5:
        x = x.permute(0, 1, 3, 2, 4)
    else:
        x = x.permute(0, 1, 3, 4, 2, 5)
    return x.flatten(1, 2)[:, :T]


def scalar_decays(Gx, G):
    """[.., C, C]: exp(Gx_t - G_s) for s < t, 0 elsewhere (Gx, G [.., C, 1]: the
    exclusive and inclusive cumulative log decay); exponents ≤ 0 for decays ≤ 1."""
    C = G.shape[-2]
    later = torch.ones(C, C, dtype=torch.bool, device=G.device).tril(-1)  # t > s
    return torch.exp((Gx - G.mT).masked_fill(~later, float("-inf")))


def flat(scores):
    """[.., C, Rx, C, Ry] -> [.., C·Rx, C·Ry]."""
    return scores.flatten(-2, -1).flatten(-3, -2)


def flat_rows(x):
    """[.., C, R, X] -> [.., C·R, X]."""
    return x.flatten(-3, -2)
