"""The programs of the triton backends around their kernels: the scan program with the
diagonal scan kernel, the chunk program with the matrix-state kernels."""

from __future__ import annotations

import textwrap
from dataclasses import replace

from reclang.analysis.forms import Diag
from reclang.analysis.operands import ChunkState
from reclang.ir import IR
from reclang.schedule import TritonMatrixSchedule, TritonScanSchedule

from .chunk import ChunkProgram, preamble
from .fused_loop import gates_called
from .ir_to_torch import comment
from .loop import INDENT, py_name
from .matrix_slots import (
    NewState,
    SlotPrinter,
    differentiable,
    new_state_parts,
    over_tile,
    state_slots,
)
from .names import Names
from .render import assemble
from .scan import ScanProgram


class TritonScanProgram(ScanProgram):
    """The scan backend's program with the scan as a kernel defined in the same file."""

    title, scan_function = "Triton", "linear_scan"

    def __init__(self, ir: IR, form: Diag, schedule: TritonScanSchedule, summary: str,
                 not_gated: str):
        super().__init__(ir, form, schedule, summary)
        self.not_gated = not_gated  # why the gated scan does not apply

    def source(self) -> str:
        forward = self.forward(
            f"Runs {self.ir.name} over whole sequences with the Triton scan: inputs "
            "[B, T, ...], states are the initial ones; returns (outputs, final states).")
        imports = ["", "from reclang.runtime.operands import operand"] if "operand(" in forward \
            else []
        return assemble(self, "diag_scan.py.jinja", [
            "Triton backend: h' = a h + b elementwise; the scan is the kernel below (from",
            "backends/templates/diag_scan.py.jinja); a and b are computed on all tokens at once.",
            *textwrap.wrap(f"Not the gated scan: {self.not_gated}.", 88)], forward, imports,
            slots=dict(schedule=self.schedule))


class TritonChunkProgram(ChunkProgram):
    """The chunk backend's program with each state run by the recurrent kernel, or by
    the chunk kernels with the operands they can compute in their slots."""

    pass_function, how, packed = "state_pass", "with the Triton kernel", True
    schedule: TritonMatrixSchedule
    every = False  # every kernel variant, whatever the plan calls (to test the kernels)

    def new_state_readouts(self) -> set[str]:
        """The states read through the kernels' inclusive mask (their new values), with
        self.ops' parts rewritten so: where every read of a state is of its new value
        and it runs the chunk kernels with slots, for all of them, else none (the
        analyzer's readouts of the previous states, with a bonus in the epilogue)."""
        parts = new_state_parts(self.ir)
        if parts is None:
            return set()
        reads = [t for p in parts for t in p.terms]
        new = {t.state for t in reads if isinstance(t.state, NewState)}
        if not new or new & {t.state for t in reads if not isinstance(t.state, NewState)}:
            return set()
        original, self.ops = self.ops, replace(self.ops, parts=parts)
        per_state, _ = self.readouts()
        states = [(i, s) for i, s in enumerate(self.ops.states) if s.name in new]
        if all(state_slots(self.ir, i, s, per_state.get(s.name, [])) is not None and
               all(over_tile(s, q) for q in per_state.get(s.name, [])) for i, s in states):
            return new
        self.ops = original
        return set()

    def state_block(self, s: ChunkState, queries: list) -> str:
        index = [x.name for x in self.ops.states].index(s.name)
        slots = state_slots(self.ir, index, s, queries)
        if slots is None:
            return super().state_block(s, queries)
        slots.inclusive = s.name in self.inclusive
        self.slot_states.append(slots)
        v = self.state_vars(s)
        inside = "".join(r for r in "wabkvq" if r in slots.exprs or r in "ab"
                         and not s.low_rank)
        self.operand_functions.append(self.operand_function(slots, v, queries, inside))
        self.lines.append(f"# ---- {self.spec_line(s.name)}")
        self.lines.append(f"# in the kernels: {', '.join(slots.exprs)}, from "
                          f"{', '.join(slots.raw)}")
        if slots.precomputed:
            self.lines.append(f"# precomputed: {', '.join(slots.precomputed)}")
        self.emit_operands(s, v, queries, "".join(slots.precomputed))
        pre = ", ".join("None" if r in inside else getattr(v, r) for r in "wabkvq")
        raw = ", ".join(py_name(x) for x in slots.raw)
        self.lines.append(f"{v.out}, {v.last} = state_pass_slots({self.slots_var(s)}, "
                          f"({raw},), ({pre}), {self.initial(s)}, cu_seqlens=cu_seqlens)")
        self.final(s, v)
        return v.out

    def slots_var(self, s: ChunkState) -> str:
        return f"_{py_name(s.name)}_slots"

    def operand_function(self, slots, v, queries: list, roles: str) -> str:
        """`_<state>_operands(raw...)`: the state's in-kernel operands in PyTorch, for the
        backward pass, and the state's Slots."""
        s, first = slots.state, py_name(slots.raw[0])
        # a function of its own: its variables, named constants and needs are its own
        saved = self.lines, self.names, self.sympy.definitions, self.sympy.needs
        self.lines, self.sympy.definitions, self.sympy.needs = [], [], set()
        self.names = self.sympy.names = Names(self.ir)
        self.names.taken |= set(vars(v).values())
        Hs, Kf = self.flat(s, s.shared)[0], self.flat(s, s.key)[0]
        self.emit_operands(s, v, queries, roles)
        for side in "ab" if not s.low_rank else "":
            self.lines.append(f"{getattr(v, side)} = _like.new_zeros((B, T, 0, {Hs}, {Kf}))")
        self.lines.append(f"return {', '.join(getattr(v, r) for r in roles)}")
        body = preamble(first, self.sympy.needs, self.lines) + self.sympy.definitions + \
            self.lines
        self.lines, self.names, self.sympy.definitions, self.sympy.needs = saved
        self.sympy.names = self.names
        name = py_name(s.name)
        sizes = (Hs, Kf, self.flat(s, s.value)[0], s.decay_on_key, len(s.low_rank))
        return "\n".join(
            [f"def _{name}_operands({', '.join(py_name(x) for x in slots.raw)}):",
             f'{INDENT}"""The operands of {comment(s.name)} the kernels compute ('
             f'{", ".join(slots.exprs)}), in PyTorch: what the backward differentiates."""'] +
            [INDENT + line for line in body] +
            ["", "", f"{self.slots_var(s)} = Slots({slots.index}, {sizes}, _{name}_operands, "
             f"inclusive={slots.inclusive}, differentiable={differentiable(slots)})"])

    def source(self) -> str:
        self.slot_states, self.operand_functions = [], []
        self.inclusive = self.new_state_readouts()
        forward = self.forward()
        precomputed = [f"{st.state.name}: {', '.join(st.precomputed)}" for st in
                       self.slot_states if st.precomputed]
        about = ("Triton backend: each matrix state, S_t = (exp(w_t) + Σ a bᵀ) S_{t-1} + Σ k "
                 "vᵀ, runs in the kernels below: in chunks (backends/templates/mat_chunk.py."
                 "jinja) where they apply, else step by step (mat_recurrent.py.jinja). ")
        if self.slot_states:
            about += ("The chunk kernels compute the operands from the raw inputs "
                      "(mat_slots.py.jinja); ")
            about += ("precomputed on all tokens (not elementwise in the inputs, or able to "
                      "overflow from finite ones): "
                      + "; ".join(precomputed) + ". " if precomputed else "none precomputed. ")
        else:
            about += "The operands are computed on all tokens at once. "
        about += "The outputs are computed on all tokens at once, as in the chunk backend."
        slots = SlotPrinter(self.ir, self.slot_states).slots()
        return assemble(self, "mat_recurrent.py.jinja", textwrap.wrap(about, 88),
            "\n\n\n".join(self.operand_functions + [forward]),
            ["", f"from reclang.runtime.chunk import {self.runtime_names()}",
             "from reclang.runtime.operands import operand"],
            slots=dict(chunk=self.schedule.chunk, schedule=self.schedule,
                       slots=slots,
                       gates=gates_called(*(b.code for bs in slots.values() for b in bs)),
                       with_slots=bool(self.slot_states),
                       plain_pass=self.every or len(self.slot_states) < len(self.ops.states),
                       **self.variants()))

    def runtime_names(self) -> str:
        """What the file imports from reclang/runtime/chunk.py: causal_pass (every pass
        runs through it), LOG_ZERO where the slots' pass clamps log decays, and
        check_log_decay where an unproven decay is checked."""
        names = ["LOG_ZERO"] if self.slot_states else []
        return ", ".join(names + ["causal_pass"] + ["check_log_decay"] * self.checks)

    def variants(self) -> dict:
        """Which kernels the file holds, from the plan: the chunk kernels for the states
        with one input term, one readout and a low-rank part of rank 1 at most (their WY
        kernels if one has that part), the recurrent kernel for the others."""
        if self.every:
            return dict(chunked=True, recurrent=True, feed=True)
        queries, _ = self.readouts()
        chunked = [s for s in self.ops.states if len(s.inputs) == 1 and len(s.low_rank) <= 1
                   and len(queries.get(s.name, [])) == 1]
        return dict(chunked=bool(chunked), recurrent=len(chunked) < len(self.ops.states),
                    feed=any(s.low_rank for s in chunked))
