"""The one collective of a sequence-parallel layer: an all_gather of the ranks' summaries,
then the same prefix combination on every rank; backward, the mirrored pass.

Forward, with (Φ_r, c_r) the summary of rank r and S_0 the initial state of the whole
sequences:

    S_{r+1} = Φ_r S_r + c_r          rank r starts from S_r; S_P is the final state

Backward, with Ḡ_r the adjoint of S_r from rank r's outputs and F̄_r the adjoint of S_P
from rank r's use of the final state: an all_gather of the Ḡ_r and an all_reduce of the
F̄_r, then on every rank

    λ_P = Σ_r F̄_r,   λ_r = Φ_rᵀ λ_{r+1} + Ḡ_r,   dΦ_r = λ_{r+1} S_rᵀ,   dc_r = λ_{r+1}

(autograd runs it, on the gathered values: its complex and broadcast rules are the
ones the forward used). Rank r keeps dΦ_r and dc_r; dS_0 = λ_0 goes to rank 0 alone, so
that, as for the parameters, the ranks' gradients sum to the whole one.

A rank's buffers hold the sequences its slice touches (with cu_seqlens: those of the
rank with most; every rank's, padded to that many), so it sends its summary once
forward and the adjoints once backward: O(state size) bytes per sequence and layer,
whatever T_r; the final state's adjoints are reduced over all N sequences.
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


def summed(flat: torch.Tensor, group, counter: dict, key: str) -> torch.Tensor:
    """The sum of every rank's buffer; counts the bytes this rank sends."""
    flat = flat.contiguous().clone()
    dist.all_reduce(flat, group=group)
    counter[key] = counter.get(key, 0) + flat.numel() * flat.element_size()
    return flat


def padded(t: torch.Tensor, rows: int) -> torch.Tensor:
    """[rows, ...]: the ranks' buffers have one size, that of the rank with most sequences."""
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def combine(lays, spans, phis: list, cs: list, inits: list) -> list[list[torch.Tensor]]:
    """S_0 .. S_P (each a list over states, [N, ...]) from every rank's summary; rank r's
    covers the sequences first_r ... first_r + count_r - 1 (`spans`)."""
    states = [list(inits)]
    for (first, count), phi_r, c_r in zip(spans, phis, cs):
        end = first + count
        states.append([torch.cat([s[:first], lay.apply(p[:count], s[first:end]) + c[:count],
                                  s[end:]])
                       for lay, p, s, c in zip(lays, phi_r, states[-1], c_r)])
    return states


class Exchange(torch.autograd.Function):
    """(Φ_r..., c_r..., S_0...) -> (S_r..., S_P...) for this rank r, per state: Φ_r, c_r
    and S_r over this rank's sequences, S_0 and S_P over all of them."""

    @staticmethod
    def forward(ctx, lays, spans, group, counter, *tensors):
        k, rank = len(lays), dist.get_rank(group)
        rows = max(count for _, count in spans)
        mine = [padded(t, rows) for t in tensors[:2 * k]]
        gathered = gather(pack(mine), group, counter, "forward")
        summaries = [unpack(row, mine) for row in gathered]
        inits = tensors[2 * k:]
        states = combine(lays, spans, [s[:k] for s in summaries], [s[k:] for s in summaries],
                         inits)
        ctx.lays, ctx.spans, ctx.group, ctx.counter = lays, spans, group, counter
        ctx.save_for_backward(gathered, *tensors)
        first, count = spans[rank]
        return (*(s[first:first + count].clone() for s in states[rank]), *states[-1])

    @staticmethod
    def backward(ctx, *grads):
        lays, spans, k = ctx.lays, ctx.spans, len(ctx.lays)
        rank, rows = dist.get_rank(ctx.group), max(count for _, count in spans)
        gathered, *tensors = ctx.saved_tensors
        first, count = spans[rank]
        inits = tensors[2 * k:]
        starts = [padded(torch.zeros_like(t[first:first + count]) if g is None else g, rows)
                  for g, t in zip(grads[:k], inits)]
        finals = [torch.zeros_like(t) if g is None else g for g, t in zip(grads[k:], inits)]
        adjoints = [unpack(row, starts) for row in
                    gather(pack(starts), ctx.group, ctx.counter, "backward")]
        final = unpack(summed(pack(finals), ctx.group, ctx.counter, "backward"), finals)
        found = _reverse(lays, spans, gathered, tensors, adjoints, final, rank)
        # zeros, not None, elsewhere: every rank then has a gradient to reduce (DDP, FSDP)
        d_init = found[2 * k:] if rank == 0 else [torch.zeros_like(g) for g in found[2 * k:]]
        return (None, None, None, None, *found[:2 * k], *d_init)


def _reverse(lays, spans, gathered, tensors, adjoints, final, rank) -> list:
    """The gradients of this rank's Φ_r, c_r and of S_0: autograd's reverse of the
    combination, recomputed from the gathered summaries and seeded with every rank's
    adjoints."""
    k, rows = len(lays), max(count for _, count in spans)
    mine = [padded(t, rows) for t in tensors[:2 * k]]
    with torch.enable_grad():
        summaries = [[t.detach().requires_grad_() for t in unpack(row, mine)]
                     for row in gathered]
        inits = [t.detach().requires_grad_() for t in tensors[2 * k:]]
        states = combine(lays, spans, [s[:k] for s in summaries], [s[k:] for s in summaries],
                         inits)
        outputs = [s[f:f + n] for r, (f, n) in enumerate(spans) for s in states[r]]
        seeds = [g[:n] for (_, n), a in zip(spans, adjoints) for g in a]
        leaves = [*summaries[rank], *inits]
        found = torch.autograd.grad(outputs + states[-1], leaves, seeds + final,
                                    allow_unused=True)
    found = [torch.zeros_like(t) if g is None else g for g, t in zip(found, leaves)]
    count = spans[rank][1]
    return [g[:count] for g in found[:2 * k]] + found[2 * k:]
