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

from . import init
from .ast_to_ir import build_ir
from .codegen.names import py_name
from .errors import RecError
from .generated import load_source, note_origin
from .ir import IR, Decl
from .parser import parse
from .runtime import packing

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed: no parameter is sharded
    DTensor = ()
LOW_PRECISION = (torch.bfloat16, torch.float16)
RESERVED_ARGS = ("self", "state", "lengths", "cu_seqlens", "cell")  # self: nn.Module.__call__


class RecModule(nn.Module):
    def __init__(self, ir: IR, backend: str, source: str, generated, device=None, dtype=None,
                 prologue=None):
        """`device`, `dtype`: the parameters', as nn.Linear's (complex params: complex).
        `prologue`: (Prologue, source, module) of reclang/hoist.py and codegen/prologue.py,
        run before the backend when the cell has lag, t or subscript expressions."""
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"the parameters' dtype must be a real floating-point one, got {dtype}")
        self.ir, self.backend, self.source = ir, backend, source
        self._generated = generated
        self._prologue = prologue
        self._on_device: dict[str, tuple] = {}  # device type -> (backend, source, code)
        self._builders: dict = {}  # device type -> what makes its (source, code), once
        self._auto = None  # an `auto` module's choices per size on CPU (cost/auto.py)
        for decl in ir.inputs:
            if decl.name in RESERVED_ARGS:
                raise RecError(f"input name '{decl.name}' is an argument of the module "
                               "call; rename the input", ir.source, decl.loc)
        for decl in ir.params:
            if hasattr(self, decl.name) or decl.name in RESERVED_ARGS:
                raise RecError(f"param name '{decl.name}' clashes with an attribute of the "
                               "module; rename it", ir.source, decl.loc)
            kind = dtype.to_complex() if decl.dtype == "complex" else dtype
            self.register_parameter(decl.name, nn.Parameter(
                torch.empty(decl.shape, dtype=kind, device=device)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The spec's initializers, in place, each evaluated in its parameter's dtype and
        device; a module built on the meta device: `to_empty(device=...)`, then this."""
        values: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for decl in self.ir.params:
                p = getattr(self, decl.name)
                values[decl.name] = init.evaluate(self.ir, decl, values, p.dtype.to_real(),
                                                  p.device)
                p.copy_(values[decl.name])

    # ---- pickle, copy.deepcopy, torch.save: rebuilt from the spec and the generated sources
    def __getstate__(self) -> dict:
        """The module without its generated Python modules, which cannot be pickled: the
        spec (text, file name, hyperparameters) stands for the IR, and `__setstate__`
        loads the sources again through the checking loader (reclang/generated.py)."""
        state = self.__dict__.copy()
        state["ir"] = (self.ir.source, dict(self.ir.hypers))
        state["_generated"] = None
        state["_prologue"] = self._prologue and self._prologue[:2]
        state["_on_device"] = {k: v[:2] for k, v in self._on_device.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_auto", None)  # pickled before auto measured per size
        source, hypers = self.ir
        self.ir = build_ir(parse(source.text, source.filename), hypers)
        stem = self.ir.name + "_"  # + the backend, as compile.Cell names the files
        self._generated = load_source(self.source, stem + self.backend, source)
        if self._prologue is not None:
            info, text = self._prologue
            self._prologue = info, text, load_source(text, stem + "prologue", source)
        self._on_device = {k: (b, text, text and load_source(text, stem + b, source))
                           for k, (b, text) in self._on_device.items()}  # None: deferred

    def extra_repr(self) -> str:
        others = "".join(f", on {k}: {v[0]}" for k, v in self._on_device.items())
        auto = f", auto on cpu: {'; '.join(self._auto.describe())}" if self._auto else ""
        return f"cell={self.ir.name}, backend={self.backend}{others}{auto}"

    def use_on(self, device_type: str, backend: str, source: str | None = None,
               generated=None, build=None) -> None:
        """Runs whole sequences on tensors of this device type ("cuda") with another
        backend's generated code (the parameters are the same). `build`, instead of
        `source` and `generated`: a function returning them, called on the first
        tensors of that device (so that a backend is generated only when it runs)."""
        self._on_device[device_type] = (backend, source, generated)
        if build is not None:
            self._builders[device_type] = build

    def backend_for(self, device) -> str:
        """The backend whose code runs whole sequences on tensors of this device."""
        return self._on_device.get(torch.device(device).type, (self.backend,))[0]

    def _forward_for(self, inputs: dict, state: dict | None, varlen: bool):
        first = next(iter(inputs.values()), None)
        device = first.device.type if torch.is_tensor(first) else "cpu"
        if device == "cpu" and self._auto is not None and not varlen:
            return self._auto.code(self, inputs, state)
        if device not in self._on_device:
            return self._generated
        if device in self._builders:
            self._on_device[device] = (self._on_device[device][0],
                                       *self._builders.pop(device)())
        return self._on_device[device][2]

    # ---- running
    def forward(self, *args, state: dict | None = None, lengths=None, cu_seqlens=None,
                **inputs):
        """Whole sequences: inputs [B, T, *dims], by name. `lengths` ([B], right-padded
        batches) or `cu_seqlens` (packed sequences in a batch of one) run variable-length
        sequences without computing padding (see reclang/runtime/packing.py)."""
        self._no_positional(args)
        code = self._forward_for(inputs, state, lengths is not None or cu_seqlens is not None)
        if lengths is None and cu_seqlens is None:
            return self._run(code.forward, inputs, state, sequence=True)
        if lengths is not None and cu_seqlens is not None:
            raise TypeError("give lengths or cu_seqlens, not both")
        # the same checks as a plain call: inputs, then the state against the number of
        # sequences (B with lengths, N with cu_seqlens)
        first = self._check_inputs(inputs, sequence=True)[0][0]
        if lengths is not None:
            lengths = packing.checked_lengths(lengths, first)
        else:
            cu_seqlens = packing.packed_offsets(first, cu_seqlens)
        self._check_state_arg(state, len(lengths) if lengths is not None else len(cu_seqlens) - 1)
        packs = "cu_seqlens" in inspect.signature(code.forward).parameters
        if lengths is not None and packs:  # one call on the sequences packed end to end
            packed, offsets = packing.pack(inputs, lengths)
            y, final = self.forward(state=state, cu_seqlens=offsets, **packed)
            return packing.unpack(y, lengths, first.shape[1]), final
        if cu_seqlens is not None and packs:  # the backend packs by itself
            packed = functools.partial(code.forward, cu_seqlens=torch.tensor(
                cu_seqlens, dtype=torch.int64, device=first.device))
            return self._run(packed, inputs, state, sequence=True, batch=len(cu_seqlens) - 1,
                             cu_seqlens=cu_seqlens)

        def run(part, part_state):
            y, s = self._run(code.forward, part, part_state, sequence=True)
            return (y if isinstance(y, dict) else {self.ir.outputs[0].arg: y}), s

        if lengths is not None:
            outs, final = packing.run_padded(run, inputs, state, lengths)
        else:
            outs, final = packing.run_packed(run, inputs, state, cu_seqlens)
        return (next(iter(outs.values())) if len(outs) == 1 else outs), final

    def step(self, *args, state: dict | None = None, **inputs):
        """One time step: inputs [B, *dims], by name; returns (outputs [B, *dims], new
        state)."""
        self._no_positional(args)
        return self._run(self._generated.step, inputs, state, sequence=False)

    def _no_positional(self, args: tuple):
        """Inputs are passed by name: a positional tensor must not become the state."""
        if args:
            names = ", ".join(f"{d.name}=..." for d in self.ir.inputs)
            raise TypeError(f"{self.ir.name} takes its inputs and state by name: "
                            f"m({names}, state=...); got {len(args)} positional argument"
                            f"{'s' * (len(args) != 1)}")

    def initial_state(self, batch: int, dtype=torch.float32, device=None) -> dict:
        """The states a sequence starts from when no state is given, [B, *dims], with
        what lag and t carry (zeros: `lag_<name>` [B, K, *dims], `t` [B]; hoist.py)."""
        params = {d.name: _cast(getattr(self, d.name), dtype) for d in self.ir.params}
        states = {d.name: init.evaluate(self.ir, d, params, dtype, device)
                  .expand(batch, *d.shape).clone() if d.init is not None
                  else torch.zeros(batch, *d.shape, dtype=_state_dtype(d, dtype), device=device)
                  for d in self.ir.states}
        return states | {d.name: torch.zeros(batch, *d.shape, dtype=_state_dtype(d, dtype),
                                             device=device) for d in self._carried()}

    def _carried(self) -> list:
        """The states the prologue carries (lag histories, the step counter), as Decls."""
        if self._prologue is None:
            return []
        return [Decl(name, "state", shape, dtype, None)
                for name, shape, dtype in self._prologue[0].carried()]

    def _run(self, fn, inputs: dict, state: dict | None, sequence: bool,
             batch: int | None = None, cu_seqlens=None):
        """`batch`: the number of states, when it is not the inputs' (packed sequences
        at `cu_seqlens`)."""
        xs, inputs_batch, dtype = self._check_inputs(inputs, sequence)
        batch = batch or inputs_batch
        device = xs[0].device.type
        if torch.is_autocast_enabled(device) and dtype != torch.float64:
            dtype = torch.get_autocast_dtype(device)  # the outputs', as autocast's matmuls
        compute = torch.float32 if dtype in LOW_PRECISION else dtype
        xs = [x.to(compute) for x in xs]
        states = self._check_state(state, batch, compute, xs[0].device)
        params = {d.name: _cast(_whole(getattr(self, d.name)), compute) for d in self.ir.params}
        carried = {}
        if self._prologue is not None:
            with torch.autocast(device, enabled=False):
                xs, params, carried = self._before(xs, states, params, sequence, cu_seqlens)
        states = states[:len(self.ir.states)]
        # every backend computes in `compute`: autocast would pick the dtype op by op,
        # so that each backend returned another dtype (and its states lost precision)
        with torch.autocast(device, enabled=False):
            try:
                outs, final = fn(*xs, *states, **{py_name(k): v for k, v in params.items()})
            except Exception as err:  # raised in generated code: name the spec line
                note_origin(err)
                raise
        if dtype in LOW_PRECISION:
            outs = {k: v if v.is_complex() else v.to(dtype) for k, v in outs.items()}
        y = next(iter(outs.values())) if len(outs) == 1 else outs
        return y, final | carried

    def _before(self, xs: list, states: list, params: dict, sequence: bool, cu_seqlens):
        """Runs the prologue: the inputs and params with the derived ones after them, and
        the carried states after the call. A step is a sequence of one; packed sequences
        run it right-padded, so that no lag crosses from one sequence into the next."""
        info, _, code = self._prologue
        seqs, lengths = xs if sequence else [x[:, None] for x in xs], None
        if cu_seqlens is not None:
            offsets = torch.tensor(cu_seqlens, device=xs[0].device)
            lengths = offsets[1:] - offsets[:-1]
            seqs = [packing.unpack(x, lengths, int(lengths.max())) for x in seqs]
        carried = states[len(self.ir.states):]
        try:
            derived, final = code.prologue(*seqs, *carried, lengths,
                                           **{py_name(k): v for k, v in params.items()})
        except Exception as err:  # raised in generated code: name the spec line
            note_origin(err)
            raise
        extra = []
        for d in (d for d in info.derived if d.kind == "input"):
            x = derived[d.name]
            if cu_seqlens is not None:
                x = packing.pack({"x": x}, lengths.tolist())[0]["x"]
            extra.append(x if sequence else x[:, 0])
        params = params | {d.name: derived[d.name] for d in info.derived if d.kind == "param"}
        return xs + extra, params, final

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
        if lead[0] == 0:
            raise ValueError("the batch is empty (B = 0)")
        if sequence and lead[1] == 0:
            raise ValueError("the sequences are empty (T = 0)")
        xs = [inputs[n] for n in names]
        self._check_dtypes(xs)
        return xs, lead[0], xs[0].dtype

    def _check_dtypes(self, xs: list):
        """One dtype for all inputs; parameters never narrowed to it (as nn.Linear, which
        refuses float32 inputs with float64 weights), except that bf16/fp16 inputs are
        computed in float32 (mixed precision)."""
        first, dtype = self.ir.inputs[0].name, xs[0].dtype
        for d, x in zip(self.ir.inputs, xs):
            if x.dtype != dtype:
                raise TypeError(f"input {d.name} is {_word(x.dtype)} but input {first} is "
                                f"{_word(dtype)}: give every input the same dtype")
        compute = torch.float32 if dtype in LOW_PRECISION else dtype
        param = next(self.parameters(), None)
        wide = None if param is None else _real(param.dtype)
        if wide is not None and wide.itemsize > compute.itemsize:
            raise TypeError(f"input {first} is {_word(dtype)} but the parameters of "
                            f"{self.ir.name} are {_word(wide)}: convert the inputs "
                            f"(.to({wide})) or the module (m.to({compute}))")

    def _check_state_arg(self, state, batch: int):
        """The `state=` argument: None, or a dict of some states -> [batch, *dims]."""
        decls = self.ir.states + self._carried()
        names = [d.name for d in decls]
        if state is None:
            return
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of states ({', '.join(names) or 'none'}) "
                            f"-> tensors [B, ...], got {type(state).__name__}; inputs are "
                            "keyword arguments")
        unknown = [k for k in state if k not in names]
        if unknown:
            raise TypeError(f"{self.ir.name} has no state {unknown[0]!r}; its states are "
                            f"{', '.join(names)}")
        for d in decls:
            if d.name not in state:
                continue
            s, expected = state[d.name], [batch, *d.shape]
            if not torch.is_tensor(s) or not (s.is_floating_point() or s.is_complex()):
                raise TypeError(f"state {d.name} must be a floating-point tensor of shape "
                                f"{expected}, got {_kind(s)}")
            if s.is_complex() and d.dtype != "complex":
                raise TypeError(f"state {d.name} is real, got a complex tensor")
            if tuple(s.shape) != tuple(expected):
                raise ValueError(f"state {d.name}: expected shape {expected}, got "
                                 f"{list(s.shape)}")

    def _check_state(self, state: dict | None, batch: int, dtype, device) -> list:
        self._check_state_arg(state, batch)
        state = state or {}
        result = []
        initial = None
        for d in self.ir.states + self._carried():
            if d.name not in state:
                initial = initial or self.initial_state(batch, dtype, device)
                result.append(initial[d.name])
                continue
            result.append(state[d.name].to(_state_dtype(d, dtype)))
        return result


def _word(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _kind(value) -> str:
    if not torch.is_tensor(value):
        return type(value).__name__
    word = _word(value.dtype)
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word} tensor"


def _real(dtype):
    # a table, not dtype.to_real(): torch.compile traces the one, not the other
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def _state_dtype(decl, dtype):
    # promote_types, not dtype.to_complex(): torch.compile traces the one, not the other
    return torch.promote_types(dtype, torch.complex64) if decl.dtype == "complex" else dtype


def _whole(p: torch.Tensor) -> torch.Tensor:
    """A parameter that FSDP's fully_shard left sharded (a call outside the forward it
    hooks, such as `m.step`): its full value, all-gathered over its mesh."""
    return p.full_tensor() if isinstance(p, DTensor) else p


def _cast(p: torch.Tensor, dtype):
    return p.to(torch.promote_types(dtype, torch.complex64) if p.is_complex() else dtype)
