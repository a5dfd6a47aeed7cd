"""The one collective of a sequence-parallel layer: an all_gather of the ranks' summaries,
then the same prefix combination on every rank; backward, the mirrored pass.

Forward, with (Φ_r, c_r) the summary of rank r and S_0 the initial state of the whole
sequences:

    S_{r+1} = Φ_r S_r + c_r          rank r starts from S_r; S_P is the final state

Backward, with Ḡ_r the adjoint of S_r from rank r's outputs and F̄_r the adjoint of S_P
from rank r's use of the final state: one all_gather of (Ḡ_r, F̄_r), then on every rank

    λ_P = Σ_r F̄_r,   λ_r = Φ_rᵀ λ_{r+1} + Ḡ_r,   dΦ_r = λ_{r+1} S_rᵀ,   dc_r = λ_{r+1}

(autograd runs it, on the gathered values: its complex and broadcast rules are the
ones the forward used). Rank r keeps dΦ_r and dc_r; dS_0 = λ_0 goes to rank 0 alone, so
that, as for the parameters, the ranks' gradients sum to the whole one.

Each rank sends its summary once forward and its adjoints once backward: O(state size)
bytes per rank and layer whatever T_r, received from the P - 1 others.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def pack(tensors) -> torch.Tensor:
    """One flat real buffer (complex tensors as their real and imaginary parts)."""
    return torch.cat([(torch.view_as_real(t) if t.is_complex() else t).reshape(-1)
                      for t in tensors])


def unpack(flat: torch.Tensor, likes) -> list[torch.Tensor]:
    out, at = [], 0
    for like in likes:
        n = like.numel() * (2 if like.is_complex() else 1)
        part = flat[at:at + n]
        at += n
        out.append(torch.view_as_complex(part.reshape(*like.shape, 2)) if like.is_complex()
                   else part.reshape(like.shape))
    return out


def gather(flat: torch.Tensor, group, counter: dict, key: str) -> torch.Tensor:
    """[P, n]: every rank's buffer, in rank order; counts the bytes this rank sends."""
    size = dist.get_world_size(group)
    out = flat.new_empty(size * flat.numel())
    dist.all_gather_single(out, flat.contiguous(), group=group)
    counter[key] = counter.get(key, 0) + flat.numel() * flat.element_size()
    return out.view(size, flat.numel())


def combine(lays, phis: list, cs: list, inits: list) -> list[list[torch.Tensor]]:
    """S_0 .. S_P (each a list over states) from every rank's summary."""
    states = [list(inits)]
    for phi_r, c_r in zip(phis, cs):
        states.append([lay.apply(p, s) + c for lay, p, s, c in zip(lays, phi_r, states[-1], c_r)])
    return states


class Exchange(torch.autograd.Function):
    """(Φ_r..., c_r..., S_0...) -> (S_r..., S_P...) for this rank r, per state."""

    @staticmethod
    def forward(ctx, lays, group, counter, *tensors):
        k = len(lays)
        phi, c, inits = tensors[:k], tensors[k:2 * k], tensors[2 * k:]
        rows = gather(pack([*phi, *c]), group, counter, "forward")
        summaries = [unpack(row, [*phi, *c]) for row in rows]
        rank = dist.get_rank(group)
        states = combine(lays, [s[:k] for s in summaries], [s[k:] for s in summaries], inits)
        ctx.lays, ctx.group, ctx.counter, ctx.rank = lays, group, counter, rank
        ctx.save_for_backward(rows, *tensors)
        return (*(s.clone() for s in states[rank]), *states[-1])

    @staticmethod
    def backward(ctx, *grads):
        lays, k, rank = ctx.lays, len(ctx.lays), ctx.rank
        rows, *tensors = ctx.saved_tensors
        likes = [*tensors[2 * k:], *tensors[2 * k:]]
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, likes)]
        adjoints = [unpack(row, likes) for row in
                    gather(pack(grads), ctx.group, ctx.counter, "backward")]
        with torch.enable_grad():
            summaries = [[t.detach().requires_grad_() for t in unpack(row, tensors[:2 * k])]
                         for row in rows]
            inits = [t.detach().requires_grad_() for t in tensors[2 * k:]]
            states = combine(lays, [s[:k] for s in summaries], [s[k:] for s in summaries],
                             inits)
            final = [sum(a[k + i] for a in adjoints) for i in range(k)]
            outputs = [s for r in range(len(rows)) for s in states[r]] + states[-1]
            seeds = [g for a in adjoints for g in a[:k]] + final
            leaves = [*summaries[rank], *inits]
            found = torch.autograd.grad(outputs, leaves, seeds, allow_unused=True)
        found = [torch.zeros_like(t) if g is None else g for g, t in zip(found, leaves)]
        d_init = found[2 * k:] if rank == 0 else [None] * k
        return (None, None, None, *found[:2 * k], *d_init)
