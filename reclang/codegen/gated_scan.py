"""The program of the triton backend's gated scan (reclang/backends/triton_scan.py): the
gates printed into the kernel, the operands computed before it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from reclang.analysis.forms import GatedDiag
from reclang.analysis.lanes import LANE, LaneForm
from reclang.ir import IR, Op
from reclang.schedule import TritonScanSchedule

from .chunk import EpilogueLowering, StatesLowering, _shape, epilogue, needed_statements, states_var
from .fused_loop import FusedProgram, KernelCode, gates_called
from .ir_to_torch import Names, align, comment, number
from .loop import INDENT, _reads, py_name
from .matrix_slots import NewState, new_state_parts


def layout(form: LaneForm, expr: sympy.Expr) -> tuple[list[str], int, int]:
    """The unit axes an operand varies along (a run of adjacent ones, else all of them)
    and where channel s of the state finds its element in the operand's [B, T, mod]:
    at (s // div) % mod. Returns (axes, div, mod)."""
    symbols = [*form.head_symbols, LANE]
    sizes = [*form.heads, form.lanes]
    used = [i for i, x in enumerate(symbols) if x in expr.free_symbols]
    if used and used != list(range(used[0], used[-1] + 1)):
        used = list(range(len(symbols)))
    first, last = (used[0], used[-1] + 1) if used else (len(symbols), len(symbols))
    return ([str(symbols[i]) for i in used], math.prod(sizes[last:]),
            math.prod(sizes[first:last]))


@dataclass
class Readout:
    """The one read of a gated scan's state: out[part] = Σ_key q h_t + free, the new
    state h_t summed over its trailing axes (groups of `group` adjacent channels)."""
    node: int                  # the linear part's node
    query: sympy.Expr          # over the form's unit symbols (head0.., lane)
    free: sympy.Expr           # the state-free rest, over the node's axes
    group: int
    dims: tuple[int, ...]      # the readout's shape per step (the state's other axes)


def readout(ir: IR, form: LaneForm) -> Readout | None:
    """The readout the gated scan computes in its kernel, or None (the states are
    written and the outputs computed from them): where the state is read once, linearly,
    as a whole new state summed over trailing axes of a power-of-2 size (at least 2)."""
    state = form.states[0]
    parts = new_state_parts(ir) or ()
    reads = [(p, t) for p in parts for t in p.terms]
    update = ir.update(state)
    if len({p.node for p, _ in reads}) != 1 or \
            not all(isinstance(t.state, NewState) and t.post == 1 for _, t in reads) or \
            len({t.axes for _, t in reads}) != 1 or \
            tuple(ir.decls[state].shape) != (*form.heads, form.lanes):
        return None
    part, term = reads[0]
    kept = [a for a, _ in term.axes]
    if kept != list(update.axes[:len(kept)]) or \
            [b for _, b in term.axes] != list(ir.node(part.node).axes):
        return None
    group = math.prod(ir.decls[state].shape[len(kept):])
    if group == 1 or group & (group - 1):  # 1: the readouts are as large as the states
        return None
    units = [*form.head_symbols, LANE]
    query = sympy.Add(*[t.query for _, t in reads]).xreplace(
        {sympy.Symbol(a, integer=True): u for a, u in zip(update.axes, units)})
    return Readout(part.node, query, part.free, group, tuple(ir.decls[state].shape[:len(kept)]))


class ScanCode(KernelCode):
    """a, b and their derivatives as the statements of the template's two functions."""

    def __init__(self, form: LaneForm, ir: IR, a: sympy.Expr, b: sympy.Expr,
                 read: Readout | None = None):
        super().__init__(form, ir)
        self.a, self.b, self.read = a, b, read
        self.printer.like = next(str(o.symbol) for o in form.operands if o.time_varying)

    def slots(self, about: str) -> dict:
        ops = [str(o.symbol) for o in self.form.operands if o.time_varying]
        consts = [str(o.symbol) for o in self.form.operands if not o.time_varying]
        layouts = [(str(o.symbol), *layout(self.form, o.expr)[1:])
                   for o in self.form.operands if o.time_varying]
        da, db = sympy.symbols("da db", real=True)
        loss = da * self.a + db * self.b
        symbols = [o.symbol for o in self.form.operands]
        derivatives = self.statements([(f"d_{x}", sympy.diff(loss, x)) for x in symbols], "e")
        # a constant alone would be a float32 scalar in Triton: a tile of the operands'
        # dtype instead (an operand always exists: the update reads an input)
        numbers = [f"{n} = tl.full({ops[0]}.shape, {number(float(e))}, {ops[0]}.dtype)"
                   for n, e in (("a", self.a), ("b", self.b)) if not e.free_symbols]
        coefficients = self.statements([(n, e) for n, e in (("a", self.a), ("b", self.b))
                                        if e.free_symbols], "e")
        return dict(name=self.ir.name, about=comment(about), file=comment(self.file),
                    ops=ops, consts=consts, layouts=layouts,
                    layout_table=str([(d, m) for _, d, m in layouts]),
                    args=", ".join(ops + consts),
                    d_args=", ".join(f"d_{x}" for x in ops + consts),
                    coefficients="\n".join(self.comments() + coefficients + numbers),
                    derivatives="\n".join(derivatives), read=self.read_slots(),
                    gates=gates_called(*coefficients, *derivatives),
                    previous=reads_previous(self.ir, self.form.states[0]))

    def read_slots(self) -> dict | None:
        """The readout's group and its query's layout, for gated_read.py.jinja."""
        if self.read is None:
            return None
        _, div, mod = layout(self.form, self.read.query)
        return {"group": self.read.group, "div": div, "mod": mod}


def reads_previous(ir: IR, state: str) -> bool:
    """Whether an output reads the state before the step (previous_states is needed)."""
    needed = needed_statements(ir, {ir.update(state).id: ""})
    return any(ir.node(r).args[0] == ir.leaves[state] for i in needed for r in _reads(ir, i))


class GatedScanProgram(FusedProgram):
    """forward(): the operands and constants in PyTorch, the gated scan, then the
    outputs from the states (as the chunk backend's epilogue)."""

    def opening(self):
        """What a forward over the states starts with: the names of the state, of its
        values after every step and of the new states, the state's dims, the first
        lines (shapes, operands and constants) and the operands' and constants' names."""
        f = self.form
        first, state = py_name(self.ir.inputs[0].name), py_name(f.states[0])
        self.names = names = self.sympy.names = Names(self.ir)
        self.sympy.definitions = []
        every, new = names.fresh(f"_{state}_all"), states_var(names, f.states[0], "new")
        dims = ", ".join(map(str, (*f.heads, f.lanes)))
        lines = [f"B, T = {first}.shape[:2]", f"_like = {first}",
                 "_dtype, _device = _like.dtype, _like.device"]
        ops, consts = self.operands(lines)
        return state, every, new, dims, lines, ops, consts

    def closing(self, lines: list[str], state: str) -> list[str]:
        """The return of outputs and final state, the sympy definitions after the first
        lines."""
        outs = ", ".join(f'"{n.arg}": {py_name(n.arg)}' for n in map(self.ir.node, self.ir.stmts)
                         if n.op == Op.OUT)
        lines.append(f'return {{{outs}}}, {{"{self.form.states[0]}": {state}}}')
        lines[3:3] = self.sympy.definitions
        return lines

    def forward(self) -> str:
        f = self.form
        state, every, new, dims, lines, ops, consts = self.opening()
        S = math.prod(f.heads) * f.lanes
        lines += [f"_h0 = {state}.reshape(-1, {S}).to(torch.promote_types({state}.dtype, "
                  "_dtype))",
                  "_starts = None if cu_seqlens is None else torch.as_tensor(cu_seqlens, "
                  "dtype=torch.int64, device=_device)"]
        if self.read is not None:
            lines += self.read_lines(ops, consts, dims)
        else:
            lines += [f"{every} = gated_scan([{', '.join(ops)}], [{', '.join(consts)}], "
                      "_h0, _starts)",
                      f"{new} = {every}.reshape(B, T, {dims})"]
            lines += self.outputs(every, dims)
            lines.append(f"{state} = final_states({every}, _h0, _starts).reshape(-1, {dims})")
        lines = self.closing(lines, state)
        doc = (f'"""Runs {self.ir.name} over whole sequences with the gated scan: inputs '
               '[B, T, ...], states are the initial ones; returns (outputs, final states)."""')
        signature, doc = self.packed_signature(doc)
        return "\n".join([signature, INDENT + doc] + [INDENT + line for line in lines])

    def read_lines(self, ops: list[str], consts: list[str], dims: str) -> list[str]:
        """The scan with its readout in the kernel, then the outputs from it."""
        r, state = self.read, py_name(self.form.states[0])
        q, read, last = (self.names.fresh(f"_{state}_{x}") for x in ("query", "read", "last"))
        axes, _, mod = layout(self.form, r.query)
        unit = [str(s) for s in self.form.head_symbols] + ["lane"]
        sizes = dict(zip(unit, (*self.form.heads, self.form.lanes)))
        shape = _shape([sizes[a] for a in axes])
        node = self.ir.node(r.node)
        self.sympy.sizes.update(zip(node.axes, node.sizes))
        value = f"{read}.reshape(B, T{''.join(f', {n}' for n in r.dims)})"
        if r.free != 0:
            free = self.sympy.lower(r.free)
            value += f" + {free.text if free.const else align(free, node.axes).text}"
        lines = [f"# the readout's query (the kernel sums q h over groups of {r.group}): "
                 f"{comment(str(r.query))}",
                 f"{q} = {self.tensor(r.query, axes, shape, 'operand')}.reshape(B, T, {mod})",
                 f"{read}, {last} = gated_readout([{', '.join(ops)}], {q}, "
                 f"[{', '.join(consts)}], _h0, _starts)"]
        lines += epilogue(self.ir, {r.node: f"({value})"}, EpilogueLowering, self.names)
        return lines + [f"{state} = {last}.reshape(-1, {dims})"]

    def operand_imports(self) -> str:
        """The import of what forward() builds its operands (and constants) with."""
        if any(not o.time_varying for o in self.form.operands):
            return "from reclang.runtime.operands import constant, operand"
        return "from reclang.runtime.operands import operand"

    def operands(self, lines: list[str]) -> tuple[list[str], list[str]]:
        """Appends the operands [B, T, their axes] and constants [S]; returns their names."""
        f = self.form
        unit = [str(s) for s in f.head_symbols] + ["lane"]
        sizes = dict(zip(unit, (*f.heads, f.lanes)))
        lines.append("# operands [B, T, their axes] and constants [S]: what the step reads; "
                     "the gates computed from them are in the kernel")
        ops, consts = [], []
        for o in f.operands:
            name = self.names.fresh(f"_{o.symbol}")
            lines.append(f"# {self.note(o.symbol, o.expr)}")
            if o.time_varying:  # along its own axes of the state, read broadcast
                axes, _, size = layout(f, o.expr)
                how, flat = "operand", f"B, T, {size}"
            else:
                axes, how, flat = unit, "constant", str(math.prod(sizes.values()))
            shape = _shape([sizes[a] for a in axes])
            flat = f".reshape({flat})" if len(axes) != 1 else ""  # one axis: flat already
            lines.append(f"{name} = {self.tensor(o.expr, axes, shape, how)}{flat}")
            (ops if o.time_varying else consts).append(name)
        return ops, consts

    def outputs(self, every: str, dims: str) -> list[str]:
        """The output statements, reading the states (and the previous states if any
        output reads them) from `every`, the states after every step."""
        state = self.form.states[0]
        update = self.ir.update(state).id
        lines = epilogue(self.ir, {update: states_var(self.names, state, "new")},
                         StatesLowering, self.names)
        if ("prev", state) not in self.names.memo:
            return lines
        return ["# the states before each step, for the outputs that read them",
                f"{states_var(self.names, state, 'prev')} = previous_states({every}, _h0, "
                f"_starts).reshape(B, T, {dims})"] + lines


def gated_program(ir: IR, form: GatedDiag, schedule: TritonScanSchedule,
                  summary: str) -> tuple[GatedScanProgram, ScanCode]:
    """The program and kernel code of a diagonal cell's gated scan (with its readout in
    the kernel where `readout` finds one)."""
    program = GatedScanProgram(ir, form.lanes, schedule, summary)
    program.read = readout(ir, form.lanes)
    return program, ScanCode(form.lanes, ir, form.a, form.b, program.read)
