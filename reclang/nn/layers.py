"""Layers made of compiled cells: `Stack` (layers on top of each other) and
`Bidirectional` (a forward and a backward pass over each sequence).

Both follow the calling convention of a `RecModule`: inputs by name, each
`[B, T, *dims]`, `state=`, `lengths=` or `cu_seqlens=`; they return `(outputs, state)`
where outputs is a tensor for one output, else a dict name -> tensor.

States:
- `Stack`: a list with one entry per layer, each that layer's state (a dict for a
  `RecModule`, a `{"forward": ..., "backward": ...}` dict for a `Bidirectional` layer);
  a given list may hold `None` for a layer that starts from its initial state.
- `Bidirectional`: `{"forward": dict, "backward": dict}`; the backward pass reads each
  sequence from its last step to its first, so its given state is the state before the
  last step and its returned state the one after the first step (as torch.nn.LSTM's
  `h_n` for the reverse direction).
"""

from __future__ import annotations

import torch
from torch import nn


def build(cell_or_factory, index: int, backend: str, **options) -> nn.Module:
    """A layer: `cell.module(backend, **options)` for a `Cell`, else `factory(index)`."""
    if hasattr(cell_or_factory, "module") and hasattr(cell_or_factory, "ir"):
        return cell_or_factory.module(backend, **options)
    if not callable(cell_or_factory):
        raise TypeError("expected a reclang Cell or a function layer index -> module, got "
                        f"{type(cell_or_factory).__name__}")
    return cell_or_factory(index)


def names(layer: nn.Module, kind: str) -> list[str]:
    """The input or output names of a RecModule, or of a layer made of them."""
    if hasattr(layer, f"{kind}_names"):
        return list(getattr(layer, f"{kind}_names"))
    decls = layer.ir.inputs if kind == "input" else layer.ir.outputs
    return [d.name if kind == "input" else d.arg for d in decls]


def as_dict(y, layer: nn.Module) -> dict:
    return y if isinstance(y, dict) else {names(layer, "output")[0]: y}


def as_result(outs: dict):
    return next(iter(outs.values())) if len(outs) == 1 else outs


class Stack(nn.Module):
    """`num_layers` layers, each with its own parameters; layer l + 1 reads layer l's
    outputs, mapped by `connect`: a dict next layer's input name -> previous layer's
    output name (default, for layers with one input and one output: that input reads
    that output). Every input of layers after the first must be connected.

    - `cell_or_factory`: a `Cell` (each layer is `cell.module(backend, chunk_size,
      device=, dtype=)`), or a function `index -> module` (a `RecModule`, a
      `Bidirectional`, or any module with that calling convention).
    - `residual`: every layer after the first adds to each connected output the first
      input in `connect` that reads it (the first layer reads the model's inputs, of
      another width in general).
    - `dropout`: on the outputs passed to the next layer, in training mode (as
      torch.nn.LSTM's: not after the last layer).
    """

    def __init__(self, cell_or_factory, num_layers: int, residual: bool = False,
                 dropout: float = 0.0, connect: dict | None = None, *,
                 backend: str = "sequential", **options):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.layers = nn.ModuleList(build(cell_or_factory, i, backend, **options)
                                    for i in range(num_layers))
        self.residual, self.dropout = residual, nn.Dropout(dropout)
        self.connect = self._connection(connect)
        self.residual_inputs = {}  # output -> the first input that reads it
        for name, source in self.connect.items():
            self.residual_inputs.setdefault(source, name)

    @property
    def input_names(self) -> list[str]:
        return names(self.layers[0], "input")

    @property
    def output_names(self) -> list[str]:
        return names(self.layers[-1], "output")

    def _connection(self, connect: dict | None) -> dict:
        ins, outs = names(self.layers[-1], "input"), names(self.layers[0], "output")
        if connect is None:
            if len(ins) != 1 or len(outs) != 1:
                raise ValueError(f"give connect= (next input -> previous output): the layers "
                                 f"have inputs {ins} and outputs {outs}")
            connect = {ins[0]: outs[0]}
        missing = [n for n in ins if n not in connect] if len(self.layers) > 1 else []
        unknown = [v for v in connect.values() if v not in outs]
        if missing or unknown:
            raise ValueError(f"connect={connect}: every input of the next layer ({ins}) must "
                             f"read an output of the previous one ({outs})")
        return dict(connect)

    def forward(self, *, state: list | None = None, lengths=None, cu_seqlens=None, **inputs):
        states = self._states(state)
        final = []
        for i, layer in enumerate(self.layers):
            y, s = layer(state=states[i], lengths=lengths, cu_seqlens=cu_seqlens, **inputs)
            final.append(s)
            y, inputs = self._next(as_dict(y, layer), inputs, i)
        return y, final

    def step(self, *, state: list | None = None, **inputs):
        """One time step of every layer: inputs [B, *dims]; returns (outputs, new state)."""
        states = self._states(state)
        final = []
        for i, layer in enumerate(self.layers):
            if not hasattr(layer, "step"):
                raise TypeError(f"layer {i} ({type(layer).__name__}) has no step form")
            y, s = layer.step(state=states[i], **inputs)
            final.append(s)
            y, inputs = self._next(as_dict(y, layer), inputs, i)
        return y, final

    def _next(self, outs: dict, inputs: dict, index: int) -> tuple:
        """Layer `index`'s outputs (with its connected inputs added, for the residual
        connection of every layer but the first) and the next layer's inputs."""
        if self.residual and index > 0:
            outs = dict(outs)
            for source, name in self.residual_inputs.items():
                outs[source] = outs[source] + inputs[name]
        if index + 1 == len(self.layers):
            return as_result(outs), None
        return as_result(outs), {name: self.dropout(outs[source])
                                 for name, source in self.connect.items()}

    def _states(self, state) -> list:
        if state is None:
            return [None] * len(self.layers)
        if not isinstance(state, (list, tuple)) or len(state) != len(self.layers):
            raise TypeError(f"state must be a list of {len(self.layers)} layer states (or "
                            f"None), got {type(state).__name__}")
        return list(state)

    def initial_state(self, batch: int, dtype=torch.float32, device=None) -> list:
        return [layer.initial_state(batch, dtype, device) for layer in self.layers]


class Bidirectional(nn.Module):
    """A forward and a backward module of the same cell (own parameters each); the
    backward one reads every sequence from its end (within its length with `lengths`,
    within its segment with `cu_seqlens`). `merge`: "concat" joins the two outputs
    along their last axis, forward first (torch.nn.LSTM's layout); "sum" adds them.

    This first version copies the inputs in reversed order for the backward pass (and
    its outputs back): a gather over time, O(B T) memory, not a backend running in
    reverse."""

    def __init__(self, cell_or_factory, merge: str = "concat", *, backend: str = "sequential",
                 **options):
        super().__init__()
        if merge not in ("concat", "sum"):
            raise ValueError(f"merge must be 'concat' or 'sum', got {merge!r}")
        self.merge = merge
        self.forward_layer = build(cell_or_factory, 0, backend, **options)
        self.backward_layer = build(cell_or_factory, 1, backend, **options)

    @property
    def input_names(self) -> list[str]:
        return names(self.forward_layer, "input")

    @property
    def output_names(self) -> list[str]:
        return names(self.forward_layer, "output")

    def forward(self, *, state: dict | None = None, lengths=None, cu_seqlens=None, **inputs):
        state = self._state(state)
        run = {"lengths": lengths, "cu_seqlens": cu_seqlens}
        y, sf = self.forward_layer(state=state["forward"], **run, **inputs)
        order = reversal(next(iter(inputs.values())), lengths, cu_seqlens)
        flipped = {k: v.index_select(1, order) if order.dim() == 1 else _gather(v, order)
                   for k, v in inputs.items()}
        yb, sb = self.backward_layer(state=state["backward"], **run, **flipped)
        outs, back = as_dict(y, self.forward_layer), as_dict(yb, self.backward_layer)
        merged = {}
        for k, v in outs.items():
            b = back[k].index_select(1, order) if order.dim() == 1 else _gather(back[k], order)
            merged[k] = torch.cat([v, b], -1) if self.merge == "concat" else v + b
        return as_result(merged), {"forward": sf, "backward": sb}

    def _state(self, state) -> dict:
        if state is None:
            return {"forward": None, "backward": None}
        if not isinstance(state, dict) or set(state) - {"forward", "backward"}:
            raise TypeError("state must be a dict {'forward': ..., 'backward': ...}, got "
                            f"{type(state).__name__}")
        return {"forward": state.get("forward"), "backward": state.get("backward")}

    def initial_state(self, batch: int, dtype=torch.float32, device=None) -> dict:
        return {"forward": self.forward_layer.initial_state(batch, dtype, device),
                "backward": self.backward_layer.initial_state(batch, dtype, device)}


def reversal(x: torch.Tensor, lengths=None, cu_seqlens=None) -> torch.Tensor:
    """Time indices that reverse each sequence of `x` [B, T, ...] within its extent:
    [T] for whole sequences and packed ones (cu_seqlens), [B, T] with lengths (padding
    stays in place). Reversing twice is the identity, so the same indices put the
    backward outputs back in order."""
    T, device = x.shape[1], x.device
    t = torch.arange(T, device=device)
    if cu_seqlens is not None:
        cu = torch.as_tensor(cu_seqlens, device=device)
        segment = torch.searchsorted(cu, t, right=True) - 1
        return cu[segment] + cu[segment + 1] - 1 - t
    if lengths is None:
        return t.flip(0)
    n = torch.as_tensor(lengths, device=device).reshape(-1, 1)
    return torch.where(t < n, n - 1 - t, t)


def _gather(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    index = order.reshape(*order.shape, *([1] * (x.dim() - 2))).expand(x.shape)
    return x.gather(1, index)
