"""Sequence parallelism over torch.distributed (LASP-2): a sequence split across ranks.

    sp = SequenceParallel(cell.module("chunk"), group=None)
    y_r, state = sp(q=q_r, k=k_r, v=v_r, g=g_r, state=None)   # this rank's slice [B, T_r, ...]

Every rank of `group` holds a contiguous slice of the same sequences, in rank order. A
rank (1) summarizes its slice (summary.py: the slice's transition Φ_r and its state
contribution c_r from zero), (2) gathers every rank's summary (exchange.py: one
all_gather), (3) combines them into its initial state S_r and the final state S_P,
(4) runs its slice from S_r with the module's backend. `y_r` are the slice's outputs,
`state` the final states of the whole sequences (the same on every rank). Gradients of
replicated values (parameters, a given `state`) are each rank's share: all-reduce them
over the group (sum) for the whole, as data parallelism does. docs/distributed.md.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.distributed as dist
from torch import nn

from ..analysis.plan import make_plan
from . import summary
from .exchange import Exchange

LOW_PRECISION = (torch.bfloat16, torch.float16)


class SequenceParallel(nn.Module):
    """Runs `module` (a compiled reclang module) on this rank's slice of the sequences;
    `group`: the ranks that share the sequences (None: the default group); `block`: how
    many steps of each sequence the summary's transitions are computed on at a time
    (memory, never the result). A cell whose plan cannot be split raises a RecError
    naming the plan."""

    def __init__(self, module, group=None, block: int = 256):
        super().__init__()
        self.module = module
        self.group = group
        self.block = block  # steps per evaluation of the step form for the transitions
        self.layouts = summary.layouts(make_plan(module.ir))
        self.bytes_sent: dict[str, int] = {}  # "forward", "backward": this rank's buffers

    def __deepcopy__(self, memo):
        """A copy of the module that shares the process group (which cannot be copied)."""
        memo[id(self.group)] = self.group
        twin = type(self).__new__(type(self))
        memo[id(self)] = twin
        twin.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return twin

    def __getstate__(self) -> dict:
        if self.group is not None:
            raise TypeError("a SequenceParallel over a process group cannot be pickled: "
                            "pickle its .module, and wrap it again where it is loaded")
        return self.__dict__

    def forward(self, *, state: dict | None = None, cu_seqlens=None, lengths=None, **inputs):
        """Inputs [B, T_r, *dims] of this rank, by name; `cu_seqlens`: the offsets of the
        whole packed batch (every rank's slices end to end), with inputs [1, T_r, ...]."""
        if lengths is not None:
            raise TypeError("SequenceParallel takes cu_seqlens (a packed batch split "
                            "across ranks), not lengths: pack the padded batch first")
        m, first = self.module, next(iter(inputs.values()))
        dtype = torch.float32 if first.dtype in LOW_PRECISION else first.dtype  # the module's
        pieces = _pieces(first, cu_seqlens, self.group)
        count = len(pieces.starts) if cu_seqlens is None else len(cu_seqlens) - 1
        lays = self.layouts
        # states are combined in the computing dtype, as the module keeps them under autocast
        with torch.autocast(first.device.type, enabled=False):
            init = m.initial_state(count, dtype, first.device)
            init.update({k: v.to(init[k].dtype) for k, v in (state or {}).items()})
            phi, c = self._summary(inputs, pieces, init, dtype)
            out = Exchange.apply(lays, pieces.spans, self.group, self.bytes_sent, *phi, *c,
                                 *(init[lay.name] for lay in lays))
        start = {lay.name: s for lay, s in zip(lays, out)}
        y, _ = m(**inputs, state=start, **pieces.call)
        return y, {lay.name: s for lay, s in zip(lays, out[len(lays):])}

    def _summary(self, inputs: dict, pieces, init: dict, dtype):
        """Per state, Φ and c of the sequences of this rank's pieces ([count, ...])."""
        m, lays = self.module, self.layouts
        first, count = pieces.spans[dist.get_rank(self.group)]
        zero = {k: torch.zeros_like(v[first:first + count]) for k, v in init.items()}
        c = m(**inputs, state=zero, **pieces.call)[1]
        if not pieces.call:  # one piece per row: the whole slice
            phis = summary.transition(m, inputs, lays, dtype, self.block)
        else:
            found = [summary.transition(m, {k: v[:, lo:hi] for k, v in inputs.items()}, lays,
                                        dtype, self.block)
                     for lo, hi in zip(pieces.starts, pieces.ends)]
            phis = [torch.cat([f[i] for f in found]) for i in range(len(lays))]
        return phis, [c[lay.name].to(init[lay.name].dtype) for lay in lays]

    def step(self, *, state: dict | None = None, **inputs):
        """One decoding step: no sequence to split, the module's own step."""
        return self.module.step(**inputs, state=state)


class _Pieces:
    """The parts of the sequences in this rank's slice: piece i is steps
    `starts[i]:ends[i]` (of row i, or of the one packed row) of sequence first + i;
    `spans`: every rank's (first, count) of sequences; `call`: the varlen argument."""

    def __init__(self, starts, ends, spans, call):
        self.starts, self.ends, self.spans, self.call = starts, ends, spans, call


def _pieces(first: torch.Tensor, cu_seqlens, group) -> _Pieces:
    batch, length = first.shape[:2]
    size = dist.get_world_size(group)
    if cu_seqlens is None:
        return _Pieces([0] * batch, [length] * batch, [(0, batch)] * size, {})
    if batch != 1:
        raise ValueError(f"with cu_seqlens the inputs are [1, T_r, ...], got B = {batch}")
    lengths = torch.zeros(size, dtype=torch.int64)  # every rank's T_r
    dist.all_gather_single(lengths, torch.tensor([length]), group=group)
    offsets = [int(o) for o in cu_seqlens]
    if offsets[-1] != int(lengths.sum()):
        raise ValueError(f"cu_seqlens ends at {offsets[-1]}, but the ranks' slices hold "
                         f"{int(lengths.sum())} steps")
    begins = [0, *itertools.accumulate(int(n) for n in lengths)]
    cuts = [_cut(offsets, lo, hi) for lo, hi in itertools.pairwise(begins)]
    rank = dist.get_rank(group)
    starts, ends = (list(x) for x in zip(*cuts[rank][1]))
    call = {"cu_seqlens": torch.tensor([0, *ends], device=first.device)}
    return _Pieces(starts, ends, [(f, len(p)) for f, p in cuts], call)


def _cut(offsets: list, begin: int, end: int) -> tuple[int, list]:
    """The first sequence in steps begin:end of the packed row, and the (start, end) of
    each sequence there, relative to begin."""
    parts = [(n, max(lo, begin) - begin, min(hi, end) - begin)
             for n, (lo, hi) in enumerate(itertools.pairwise(offsets)) if lo < end and hi > begin]
    return parts[0][0], [(lo, hi) for _, lo, hi in parts]
