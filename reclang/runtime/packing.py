"""Variable-length batches for every backend, by grouping sequences of equal length.

    y, state = m(x=x, lengths=lengths)        # x [B, T, ...] right-padded, lengths [B]
    y, state = m(x=x, cu_seqlens=cu)          # x [1, total, ...] packed, cu [N + 1]

Sequences of the same length run together in one call of the backend; nothing is
computed for padding. A backend whose forward takes `cu_seqlens` itself (the triton
backend's matrix-state kernels, gated scan and fused loop) gets packed sequences as
they are, in one call, and a right-padded batch packed end to end (`pack`, `unpack`).
With `lengths`, outputs past a sequence's end are 0 and its final state is the state
after its last step. With `cu_seqlens` (flash-linear-attention's convention: offsets 0 =
c_0 < c_1 < ... < c_N = total), the states are reset at every boundary: each sequence
starts from its own initial state (`state` holds [N, ...]) and the returned states are
[N, ...].
"""

from __future__ import annotations

import torch


def _groups(lengths: list[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for index, n in enumerate(lengths):
        groups.setdefault(n, []).append(index)
    return groups


def _check(lengths: list[int], limit: int, what: str):
    if not lengths or min(lengths) < 1 or max(lengths) > limit:
        raise ValueError(f"{what}: every sequence needs 1 to {limit} steps, got {lengths}")


def pack(inputs: dict, lengths) -> tuple[dict, torch.Tensor]:
    """A right-padded batch [B, T, ...] as its sequences packed in a batch of one
    [1, total, ...], with their offsets (cu_seqlens): for a backend that runs packed
    sequences in one call."""
    first = next(iter(inputs.values()))
    lengths = checked_lengths(lengths, first)
    live = torch.arange(first.shape[1], device=first.device) < torch.tensor(
        lengths, device=first.device)[:, None]                  # [B, T]
    cu_seqlens = torch.tensor([0] + lengths, device=first.device).cumsum(0)
    return {k: v[live][None] for k, v in inputs.items()}, cu_seqlens


def unpack(y, lengths, T: int):
    """Outputs of pack's batch, [1, total, ...] (or a dict of them), right-padded again:
    [B, T, ...], zeros past each end."""
    if isinstance(y, dict):
        return {k: unpack(v, lengths, T) for k, v in y.items()}
    lengths = torch.as_tensor(lengths, device=y.device).reshape(-1)
    live = torch.arange(T, device=y.device) < lengths[:, None]
    out = y.new_zeros((lengths.numel(), T, *y.shape[2:]))
    return out.index_put((live,), y[0])


def _integers(values, what: str) -> list[int]:
    """`values` (a tensor or a list) as Python ints; floats (2.5) are refused, not
    truncated."""
    values = torch.as_tensor(values)
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(f"{what} must be integers, got {str(values.dtype)[6:]} values "
                         f"{values.reshape(-1).tolist()[:8]}")
    return [int(n) for n in values.reshape(-1).tolist()]


def checked_lengths(lengths, first: torch.Tensor) -> list[int]:
    """The lengths as a list, checked against the batch [B, T, ...]."""
    batch, T = first.shape[:2]
    lengths = _integers(lengths, "lengths")
    if len(lengths) != batch:
        raise ValueError(f"lengths: expected {batch} lengths (one per sequence), "
                         f"got {len(lengths)}")
    _check(lengths, T, "lengths")
    return lengths


def run_padded(run, inputs: dict, state: dict | None, lengths) -> tuple[dict, dict]:
    """`run(inputs, state) -> (outputs dict, states dict)` on a right-padded batch."""
    first = next(iter(inputs.values()))
    batch, T = first.shape[:2]
    lengths = checked_lengths(lengths, first)
    outs, finals = {}, {}
    for n, rows in _groups(lengths).items():
        index = torch.tensor(rows, device=first.device)
        part = {k: v[index, :n] for k, v in inputs.items()}
        part_state = None if state is None else {k: v[index] for k, v in state.items()}
        y, s = run(part, part_state)
        for k, v in y.items():
            outs.setdefault(k, v.new_zeros((batch, T, *v.shape[2:])))[index, :n] = v
        for k, v in s.items():
            finals.setdefault(k, v.new_zeros((batch, *v.shape[1:])))[index] = v
    return outs, finals


def packed_offsets(first: torch.Tensor, cu_seqlens) -> list[int]:
    """The offsets of packed sequences, checked against the packed input `first`."""
    if first.shape[0] != 1:
        raise ValueError(f"cu_seqlens: packed sequences come in a batch of 1, "
                         f"got a batch of {first.shape[0]}")
    offsets = _integers(cu_seqlens, "cu_seqlens")
    total = first.shape[1]
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != total:
        raise ValueError(f"cu_seqlens must run from 0 to the packed length {total}, "
                         f"got {offsets}")
    _check([end - start for start, end in zip(offsets[:-1], offsets[1:])], total,
           "cu_seqlens")
    return offsets


def run_packed(run, inputs: dict, state: dict | None, cu_seqlens) -> tuple[dict, dict]:
    """`run(inputs, state)` on sequences packed along time in a batch of one."""
    first = next(iter(inputs.values()))
    offsets = packed_offsets(first, cu_seqlens)
    total = first.shape[1]
    spans = list(zip(offsets[:-1], offsets[1:]))
    outs, finals = {}, {}
    for n, members in _groups([end - start for start, end in spans]).items():
        part = {k: torch.stack([v[0, spans[m][0]:spans[m][1]] for m in members])
                for k, v in inputs.items()}
        index = torch.tensor(members, device=first.device)
        part_state = None if state is None else {k: v[index] for k, v in state.items()}
        y, s = run(part, part_state)
        for k, v in y.items():
            out = outs.setdefault(k, v.new_zeros((1, total, *v.shape[2:])))
            for row, m in enumerate(members):
                out[0, spans[m][0]:spans[m][1]] = v[row]
        for k, v in s.items():
            finals.setdefault(k, v.new_zeros((len(spans), *v.shape[1:])))[index] = v
    return outs, finals


def _right_aligned(cu_seqlens):
    """(tokens [T_max, N_seq]: the packed token at each step of each sequence, 0 before
    its start; live [T_max, N_seq]: past its start; starts [N_seq]) for the sequences
    aligned to end together at the last step."""
    import torch

    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    T = int(lengths.max())
    starts = T - lengths
    steps = torch.arange(T, device=cu_seqlens.device)[:, None]
    live = steps >= starts                                   # [T_max, N_seq]
    return torch.where(live, cu_seqlens[:-1] + steps - starts, 0), live, starts


def pad_packed(ops, cu_seqlens):
    """Operands of sequences packed along time, [total, O, 1, H, N], as a batch
    [T_max, O, N_seq, H, N] in which they all end at the last step (zeros before each
    one's start), and those starts [N_seq]."""
    import torch

    tokens, live, starts = _right_aligned(cu_seqlens)
    padded = torch.where(live[..., None, None, None], ops[:, :, 0][tokens], 0)
    return padded.transpose(1, 2), starts


def pad_packed_parts(parts, cu_seqlens):
    """pad_packed for the cpu kernel's operand parts, each [1, total, k, H, N]: each as
    [N_seq, T_max, k, H, N], and the starts [N_seq]."""
    import torch

    tokens, live, starts = _right_aligned(cu_seqlens)
    tokens, live = tokens.t(), live.t()                      # [N_seq, T_max]
    return [torch.where(live[..., None, None, None], x[0][tokens], 0) for x in parts], starts


def unpad_packed(out, cu_seqlens, starts):
    """The outputs of pad_packed's batch, [T_max, Y, N_seq, H, N], back at their
    tokens: [total, Y, 1, H, N] (`starts` as pad_packed gave them)."""
    import torch

    tokens = torch.arange(int(cu_seqlens[-1]), device=out.device)
    sequence = torch.searchsorted(cu_seqlens[1:], tokens, right=True)
    step = tokens - cu_seqlens[sequence] + starts[sequence]
    return out[step, :, sequence].unsqueeze(2)

