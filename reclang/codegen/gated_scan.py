"""The program of the triton backend's gated scan (reclang/backends/triton_scan.py): the
gates printed into the kernel, the operands computed before it."""

from __future__ import annotations

import math

import sympy

from reclang.analysis.lanes import LANE, LaneForm, Unsupported, lane_form
from reclang.ir import IR, Op

from .chunk import StatesLowering, _shape, epilogue, needed_statements, states_var
from .fused_loop import FusedProgram, KernelCode, gates_called, operand_symbols
from .ir_to_torch import Names, comment, number
from .loop import INDENT, _reads, py_name


def gated_form(ir: IR) -> tuple[LaneForm, sympy.Expr, sympy.Expr]:
    """The lane form of the cell's update with its gates inside, and a, b of its one
    state (operands o_.. and constants c_.., named from the spec), or `Unsupported`
    saying why not."""
    if len(ir.states) != 1:
        raise Unsupported("the gated scan runs cells with one state")
    form = lane_form(ir, gates=True, lane_limit=None, outputs=False,
                     kernel="the gated scan")
    state = form.states[0]
    s, f = form.prev[state], form.updates[state]
    a, b = sympy.diff(f, s), f.subs(s, 0)
    if s in a.free_symbols or s in b.free_symbols:  # the plan says affine: a safeguard
        raise Unsupported(f"the update of {state} is not affine in it")
    varying = [o for o in form.operands if o.time_varying]
    if not varying:
        raise Unsupported(f"the update of {state} reads no input")
    fixed = [o for o in form.operands if not o.time_varying]
    rename = operand_symbols(varying + fixed, ir)
    form.operands = [type(o)(rename[o.symbol], o.expr, o.time_varying)
                     for o in varying + fixed]
    return form, a.xreplace(rename), b.xreplace(rename)


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


class ScanCode(KernelCode):
    """a, b and their derivatives as the statements of the template's two functions."""

    def __init__(self, form: LaneForm, ir: IR, a: sympy.Expr, b: sympy.Expr):
        super().__init__(form, ir)
        self.a, self.b = a, b
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
                    derivatives="\n".join(derivatives),
                    gates=gates_called(*coefficients, *derivatives),
                    previous=reads_previous(self.ir, self.form.states[0]))


def reads_previous(ir: IR, state: str) -> bool:
    """Whether an output reads the state before the step (previous_states is needed)."""
    needed = needed_statements(ir, {ir.update(state).id: ""})
    return any(ir.node(r).args[0] == ir.leaves[state] for i in needed for r in _reads(ir, i))


class GatedScanProgram(FusedProgram):
    """forward(): the operands and constants in PyTorch, the gated scan, then the
    outputs from the states (as the chunk backend's epilogue)."""

    def forward(self) -> str:
        f = self.form
        first, state = py_name(self.ir.inputs[0].name), py_name(f.states[0])
        self.names = names = self.sympy.names = Names(self.ir)
        self.sympy.definitions = []
        every, new = names.fresh(f"_{state}_all"), states_var(names, f.states[0], "new")
        dims = ", ".join(map(str, (*f.heads, f.lanes)))
        lines = [f"B, T = {first}.shape[:2]", f"_like = {first}",
                 "_dtype, _device = _like.dtype, _like.device"]
        ops, consts = self.operands(lines)
        S = math.prod(f.heads) * f.lanes
        lines += [f"_h0 = {state}.reshape(-1, {S}).to(torch.promote_types({state}.dtype, "
                  "_dtype))",
                  "_starts = None if cu_seqlens is None else torch.as_tensor(cu_seqlens, "
                  "dtype=torch.int64, device=_device)",
                  f"{every} = gated_scan([{', '.join(ops)}], [{', '.join(consts)}], "
                  "_h0, _starts)",
                  f"{new} = {every}.reshape(B, T, {dims})"]
        lines += self.outputs(every, dims)
        lines.append(f"{state} = final_states({every}, _h0, _starts).reshape(-1, {dims})")
        outs = ", ".join(f'"{n.arg}": {py_name(n.arg)}' for n in map(self.ir.node, self.ir.stmts)
                         if n.op == Op.OUT)
        lines.append(f'return {{{outs}}}, {{"{f.states[0]}": {state}}}')
        lines[3:3] = self.sympy.definitions
        doc = (f'"""Runs {self.ir.name} over whole sequences with the gated scan: inputs '
               '[B, T, ...], states are the initial ones; returns (outputs, final states)."""')
        signature, doc = self.packed_signature(doc)
        return "\n".join([signature, INDENT + doc] + [INDENT + line for line in lines])

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


def gated_program(ir: IR, plan) -> tuple[GatedScanProgram, ScanCode]:
    """The program and kernel code of a diagonal cell, or `Unsupported`."""
    form, a, b = gated_form(ir)
    program = GatedScanProgram(ir, form)
    program.plan = plan
    return program, ScanCode(form, ir, a, b)
