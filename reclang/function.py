"""A cell as a function with flash-linear-attention's calling convention.

    f = cell.function()                       # backend "auto"
    o, final = f(q, k, v, g, scale=None, initial_state=None, output_final_state=False,
                 cu_seqlens=None)

- Inputs are positional, in the spec's order, each [B, T, *dims] (fla's [B, T, H, K]);
  with `cu_seqlens` the sequences are packed in a batch of one, as fla's.
- `initial_state`: the state [N, *dims] for a cell with one state (fla's [N, H, K, V]),
  else a dict name -> tensor. `final` is the same kind of value when
  `output_final_state`, else None. `o` is the output tensor (a dict for several outputs).
- `scale`: a cell that declares a hyperparameter `scale` is run with it, by default
  K ** -0.5 where K is the last axis of the first input (fla's default). A cell without
  one computes its own scale (the catalogue's GLA, DeltaNet, ... define `scale =
  K ** -0.5`, fla's default): it accepts only `scale=None`.

The cell must have no params (a function has no weights): use `cell.module()` for one
that has. One module is built per distinct scale and kept.
"""

from __future__ import annotations

from .errors import RecError


class CellFunction:
    """What `Cell.function` returns; `self.backend` is the one asked for."""

    def __init__(self, cell, backend: str, loads):
        """`loads`: compile.loads, to build the cell at another scale (passed in, so that
        this module does not import the driver that imports it)."""
        if cell.ir.params:
            names = ", ".join(d.name for d in cell.ir.params)
            raise RecError(f"cell {cell.name} has params ({names}): a function has no "
                           "weights; use cell.module()", cell.ir.source, cell.ir.params[0].loc)
        self.cell, self.backend, self._loads = cell, backend, loads
        self.inputs = [d.name for d in cell.ir.inputs]
        self.states = [d.name for d in cell.ir.states] + [  # and what lag / t carry
            name for name, _, _ in (cell.prologue.carried() if cell.prologue else ())]
        self._modules: dict = {}
        if "scale" not in cell.hypers:  # the spec's own scale: build (and check) it now
            self._module(None)

    def __repr__(self) -> str:
        return f"<reclang function {self.cell.name}({', '.join(self.inputs)}), {self.backend}>"

    def __call__(self, *inputs, scale=None, initial_state=None, output_final_state=False,
                 cu_seqlens=None):
        if len(inputs) != len(self.inputs):
            raise TypeError(f"{self.cell.name} takes {len(self.inputs)} inputs "
                            f"({', '.join(self.inputs)}), positional, got {len(inputs)}")
        if "scale" in self.cell.hypers:
            scale = inputs[0].shape[-1] ** -0.5 if scale is None else float(scale)
        elif scale is not None:
            raise TypeError(f"cell {self.cell.name} declares no hyperparameter 'scale', so "
                            "it computes its own; give scale=None, or declare `scale` in "
                            "the cell's header")
        m = self._module(scale)
        y, final = m(state=self._state(initial_state), cu_seqlens=cu_seqlens,
                     **dict(zip(self.inputs, inputs)))
        if not output_final_state:
            return y, None
        return y, (final[self.states[0]] if len(self.states) == 1 else final)

    def _state(self, initial_state):
        if initial_state is None or isinstance(initial_state, dict):
            return initial_state
        if len(self.states) != 1:
            raise TypeError(f"cell {self.cell.name} has states {', '.join(self.states)}: "
                            "give initial_state as a dict name -> tensor")
        return {self.states[0]: initial_state}

    def _module(self, scale):
        if scale not in self._modules:
            cell = self.cell
            if scale is not None:
                source = cell.ir.source
                cell = self._loads(source.text, source.filename,
                                   **{**cell.hypers, "scale": scale})
            self._modules[scale] = cell.module(self.backend)
        return self._modules[scale]
