"""The `nn.Module` a cell compiles to: parameters named as in the spec, inputs by name.

    y, state = m(q=q, k=k, v=v, g=g, state=None)       # each input [B, T, *dims]
    y_t, state = m.step(q=q_t, k=k_t, v=v_t, g=g_t, state=state)   # each [B, *dims]

`y` is the output tensor [B, T, *dims] when the cell has one `out`, else a dict of
them; `state` is a dict name -> [B, *dims]. bf16/fp16 inputs are computed in float32
(outputs are returned in the input dtype, states stay float32). Under `torch.autocast`
float32 and bf16/fp16 inputs are computed in float32 by every backend, the outputs
returned in the autocast dtype and the states in float32 (float64 inputs as without
autocast).
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from . import init, varlen
from .backends.torch_expr import py_name
from .errors import RecError
from .ir import IR

LOW_PRECISION = (torch.bfloat16, torch.float16)
RESERVED_ARGS = ("state", "lengths", "cu_seqlens", "cell")


class RecModule(nn.Module):
    def __init__(self, ir: IR, backend: str, source: str, generated):
        super().__init__()
        self.ir, self.backend, self.source = ir, backend, source
        self._generated = generated
        self._on_device: dict[str, tuple] = {}  # device type -> (backend, source, code)
        for decl in ir.inputs:
            if decl.name in RESERVED_ARGS:
                raise RecError(f"input name '{decl.name}' is an argument of the module "
                               "call; rename the input", ir.source, decl.loc)
        values: dict[str, torch.Tensor] = {}
        for decl in ir.params:
            if hasattr(self, decl.name) or decl.name in RESERVED_ARGS:
                raise RecError(f"param name '{decl.name}' clashes with an attribute of the "
                               "module; rename it", ir.source, decl.loc)
            values[decl.name] = init.evaluate(ir, decl, values)
            self.register_parameter(decl.name, nn.Parameter(values[decl.name]))

    def extra_repr(self) -> str:
        others = "".join(f", on {k}: {v[0]}" for k, v in self._on_device.items())
        return f"cell={self.ir.name}, backend={self.backend}{others}"

    def use_on(self, device_type: str, backend: str, source: str, generated) -> None:
        """Runs whole sequences on tensors of this device type ("cuda") with another
        backend's generated code (the parameters are the same)."""
        self._on_device[device_type] = (backend, source, generated)

    def backend_for(self, device) -> str:
        """The backend whose code runs whole sequences on tensors of this device."""
        return self._on_device.get(torch.device(device).type, (self.backend,))[0]

    def _forward_for(self, inputs: dict):
        first = next(iter(inputs.values()), None)
        device = first.device.type if torch.is_tensor(first) else "cpu"
        return self._on_device[device][2] if device in self._on_device else self._generated

    # ---- running
    def forward(self, state: dict | None = None, lengths=None, cu_seqlens=None, **inputs):
        """Whole sequences: inputs [B, T, *dims]. `lengths` ([B], right-padded batches)
        or `cu_seqlens` (packed sequences in a batch of one) run variable-length
        sequences without computing padding (see reclang/varlen.py)."""
        code = self._forward_for(inputs)
        if lengths is None and cu_seqlens is None:
            return self._run(code.forward, inputs, state, sequence=True)
        if lengths is not None and cu_seqlens is not None:
            raise TypeError("give lengths or cu_seqlens, not both")
        packs = "cu_seqlens" in inspect.signature(code.forward).parameters
        if lengths is not None and packs:  # one call on the sequences packed end to end
            self._check_inputs(inputs, sequence=True)
            packed, cu_seqlens = varlen.pack(inputs, lengths)
            y, final = self.forward(state=state, cu_seqlens=cu_seqlens, **packed)
            return varlen.unpack(y, lengths, next(iter(inputs.values())).shape[1]), final
        if cu_seqlens is not None and packs:
            self._check_inputs(inputs, sequence=True)  # the backend packs by itself
            first = next(iter(inputs.values()))
            offsets = varlen.packed_offsets(first, cu_seqlens)
            packed = functools.partial(code.forward, cu_seqlens=torch.tensor(
                offsets, dtype=torch.int64, device=first.device))
            return self._run(packed, inputs, state, sequence=True, batch=len(offsets) - 1)

        def run(part, part_state):
            y, s = self._run(code.forward, part, part_state, sequence=True)
            return (y if isinstance(y, dict) else {self.ir.outputs[0].arg: y}), s

        self._check_inputs(inputs, sequence=True)
        if lengths is not None:
            outs, final = varlen.run_padded(run, inputs, state, lengths)
        else:
            outs, final = varlen.run_packed(run, inputs, state, cu_seqlens)
        return (next(iter(outs.values())) if len(outs) == 1 else outs), final

    def step(self, state: dict | None = None, **inputs):
        """One time step: inputs [B, *dims]; returns (outputs [B, *dims], new state)."""
        return self._run(self._generated.step, inputs, state, sequence=False)

    def initial_state(self, batch: int, dtype=torch.float32, device=None) -> dict:
        """The states a sequence starts from when no state is given, [B, *dims]."""
        params = {d.name: _cast(getattr(self, d.name), dtype) for d in self.ir.params}
        return {d.name: init.evaluate(self.ir, d, params, dtype, device)
                .expand(batch, *d.shape).clone() if d.init is not None
                else torch.zeros(batch, *d.shape, dtype=_state_dtype(d, dtype), device=device)
                for d in self.ir.states}

    def _run(self, fn, inputs: dict, state: dict | None, sequence: bool,
             batch: int | None = None):
        """`batch`: the number of states, when it is not the inputs' (packed sequences)."""
        xs, inputs_batch, dtype = self._check_inputs(inputs, sequence)
        batch = batch or inputs_batch
        device = xs[0].device.type
        if torch.is_autocast_enabled(device) and dtype != torch.float64:
            dtype = torch.get_autocast_dtype(device)  # the outputs', as autocast's matmuls
        compute = torch.float32 if dtype in LOW_PRECISION else dtype
        xs = [x.to(compute) for x in xs]
        states = self._check_state(state, batch, compute, xs[0].device)
        params = {d.name: _cast(getattr(self, d.name), compute) for d in self.ir.params}
        # every backend computes in `compute`: autocast would pick the dtype op by op,
        # so that each backend returned another dtype (and its states lost precision)
        with torch.autocast(device, enabled=False):
            outs, final = fn(*xs, *states, **{py_name(k): v for k, v in params.items()})
        if dtype in LOW_PRECISION:
            outs = {k: v if v.is_complex() else v.to(dtype) for k, v in outs.items()}
        y = next(iter(outs.values())) if len(outs) == 1 else outs
        return y, final

    def _check_inputs(self, inputs: dict, sequence: bool):
        names = [d.name for d in self.ir.inputs]
        unknown = [k for k in inputs if k not in names]
        if unknown:
            raise TypeError(f"{self.ir.name} has no input {unknown[0]!r}; its inputs are "
                            f"{', '.join(names)}")
        missing = [n for n in names if n not in inputs]
        if missing:
            raise TypeError(f"{self.ir.name} needs input {missing[0]!r} "
                            f"(inputs: {', '.join(names)})")
        lead = None
        for d in self.ir.inputs:
            x = inputs[d.name]
            if not torch.is_tensor(x) or not x.is_floating_point():
                raise TypeError(f"input {d.name} must be a floating-point tensor")
            n = 2 if sequence else 1
            expected = ("B, T, " if sequence else "B, ") + ", ".join(map(str, d.shape))
            if x.dim() != n + len(d.shape) or tuple(x.shape[n:]) != d.shape or (
                    lead is not None and tuple(x.shape[:n]) != lead):
                raise ValueError(f"input {d.name}: expected shape [{expected}]"
                                 f"{' with the same B, T as the other inputs' if lead else ''}"
                                 f", got {list(x.shape)}")
            lead = tuple(x.shape[:n])
        if sequence and lead[1] == 0:
            raise ValueError("the sequences are empty (T = 0)")
        xs = [inputs[n] for n in names]
        return xs, lead[0], xs[0].dtype

    def _check_state(self, state: dict | None, batch: int, dtype, device) -> list:
        state = dict(state or {})
        names = [d.name for d in self.ir.states]
        unknown = [k for k in state if k not in names]
        if unknown:
            raise TypeError(f"{self.ir.name} has no state {unknown[0]!r}; its states are "
                            f"{', '.join(names)}")
        result = []
        initial = None
        for d in self.ir.states:
            if d.name not in state:
                initial = initial or self.initial_state(batch, dtype, device)
                result.append(initial[d.name])
                continue
            s = state[d.name]
            if tuple(s.shape) != (batch, *d.shape):
                raise ValueError(f"state {d.name}: expected shape "
                                 f"{[batch, *d.shape]}, got {list(s.shape)}")
            result.append(s.to(_state_dtype(d, dtype)))
        return result


def _state_dtype(decl, dtype):
    # promote_types, not dtype.to_complex(): torch.compile traces the one, not the other
    return torch.promote_types(dtype, torch.complex64) if decl.dtype == "complex" else dtype


def _cast(p: torch.Tensor, dtype):
    return p.to(torch.promote_types(dtype, torch.complex64) if p.is_complex() else dtype)
