"""The program of the scan backend (backends/scan.py): a and b of each state
printed from the analyzer's affine normal form, the states by a scan function of
reclang/runtime, the outputs on all steps at once; a dense transition is found from the
loop body run on all tokens instead."""

from __future__ import annotations

import sympy

from reclang.analysis.forms import Dense, Diag
from reclang.analysis.partition import Phase
from reclang.analysis.terms import Expander
from reclang.ir import IR, Op
from reclang.schedule import ScanSchedule, Schedule

from .chunk import StatesLowering, _shape, epilogue, preamble, states_var
from .ir_to_torch import ATOM, Code, ExprLowering, Place, align, comment, spec_origin
from .loop import INDENT, Program, py_name
from .names import Names
from .sympy_to_torch import SympyLowering, spec_indices


class TokenLowering(ExprLowering):
    """The loop body run on all B·T tokens at once: a sequence computed before the
    loop is read whole, flattened to [B·T, ...], instead of step by step."""

    def at_step(self, var: str) -> str:
        if var not in self.unbound:
            self.unbound[var] = self.names.fresh(f"_{var.strip('_')}_tokens")
        return self.unbound[var]


def _stem(expr) -> str:
    """A temporary's stem from its function and the first tensor it reads (_exp_nu_log),
    as ExprLowering names those it makes."""
    reads = [x for x in sympy.preorder_traversal(expr) if isinstance(x, sympy.Indexed)]
    first = f"_{py_name(str(reads[0].base))}" if reads else ""
    return f"_{type(expr).__name__.lower()}{first}"


def state_free_lets(ir: IR) -> dict:
    """The sympy form of each state-free let over its own axes -> its Python name: a
    common part of a and b that is a let of the spec is named as the spec names it."""
    expander, found = Expander(ir), {}
    for i in ir.stmts:
        node = ir.node(i)
        if node.op == Op.LET and expander.phase[i] != Phase.CORE and node.axes:
            env = {a: sympy.Symbol(a, integer=True) for a in node.axes}
            found.setdefault(spec_indices(expander.symbolic(node.args[0], env)),
                             py_name(node.arg))
    return found


class ScanProgram(Program):
    """The sequential forward with its loop replaced. Elementwise states: a and b
    printed from the plan, the scan, then the outputs on all steps (reading the new and
    previous states). A dense transition: the loop body becomes a function of all
    tokens at once, evaluated from chosen states (0 for b, the basis vectors along the
    mixed axes for a) and from the scanned previous states (for the outputs)."""

    Lowering = TokenLowering
    title, scan_function, runtime = "Scan", "linear_scan", "scan"

    def __init__(self, ir: IR, form: Diag | Dense, schedule: Schedule | None = None,
                 summary: str = ""):
        super().__init__(ir, schedule or ScanSchedule(), summary)
        self.form = form
        # state -> (a, b): printed where the form has them for every state
        self.parts = {s.name: (s.a, s.b) for s in form.states} if form.printable else {}
        # state -> (its mixed axes, their dims in its [B, ...] layout)
        self.mixed = {s.name: (s.mix_axes, s.mix_dims) for s in form.states if s.mix_axes}

    def scan_args(self) -> str:
        """The schedule's arguments of the scan function."""
        chunk = getattr(self.schedule, "chunk", None)
        return f", chunk={chunk}" if chunk else ""

    @property
    def printed(self) -> bool:
        """Whether a and b of every state are printed from the plan (else the loop body
        on all tokens finds them)."""
        return bool(self.ir.states) and set(self.parts) == {d.name for d in self.ir.states}

    def elementwise_forward(self, doc: str) -> str:
        """forward() of a cell whose states are all updated elementwise."""
        first = py_name(self.ir.inputs[0].name)
        self.names = Names(self.ir)
        self.sympy = SympyLowering(self.ir, {})
        self.sympy.names = self.names
        self.lets = state_free_lets(self.ir)
        lines, given = [], {}
        for d in self.ir.states:
            lines += self.scan_block(d)
            given[self.ir.update(d.name).id] = states_var(self.names, d.name, "new")
        needs = set()
        outputs = epilogue(self.ir, given, StatesLowering, self.names, needs)
        prev = [d.name for d in self.ir.states if ("prev", d.name) in self.names.memo]
        if prev:
            lines.append("# the states before each step, for the outputs that read them")
        lines += [f"{states_var(self.names, s, 'prev')} = torch.cat([{py_name(s)}[:, None], "
                  f"{states_var(self.names, s, 'new')}[:, :-1]], 1)" for s in prev]
        lines += outputs + [f"{py_name(d.name)} = {states_var(self.names, d.name, 'new')}[:, -1]"
                            for d in self.ir.states]
        lines = preamble(first, needs | self.sympy.needs, lines) + self.sympy.definitions + \
            lines
        lines.append(self.returns([(n, Place.HOIST) for n in self.ir.outputs]))
        return "\n".join([self.signature("forward"), INDENT + f'"""{doc}"""'] +
                          [INDENT + line for line in lines])

    def scan_block(self, d) -> list[str]:
        """a and b of one state on all steps, and all its states by the scan."""
        a, b = self.parts[d.name]
        update = self.ir.update(d.name)
        self.sympy.sizes.update(zip(update.axes, update.sizes))
        name = py_name(d.name)
        lines = [f"# {spec_origin(self.ir, update.loc.line)}",
                 f"# {comment(d.name)}' = a {comment(d.name)} + b: the plan's decay and input term"]
        temps, (a, b) = sympy.cse([spec_indices(a), spec_indices(b)], order="none")
        for symbol, expr in temps:  # what a and b share (a gate), computed once
            code = self.sympy.lower(expr)
            var = self.lets.get(expr) or self.names.fresh(_stem(expr))
            self.sympy.named[symbol] = Code(var, ATOM, code.axes)
            lines.append(f"{var} = {code.text}")
        made = []
        for side, expr in (("a", a), ("b", b)):
            code = self.sympy.lower(expr)
            text = align(code, update.axes).text if code.axes else code.text
            if code.const:  # a number: a tensor of the computation's dtype (complex, say)
                kind = "_cdtype" if self.sympy.is_complex(expr) else "_dtype"
                self.sympy.needs |= {"device", "complex"} if kind == "_cdtype" else {"dtype"}
                text = f"torch.tensor({text}, dtype={kind}, device=_device)"
            made.append(self.names.fresh(f"_{name}_{side}"))
            lines.append(f"{made[-1]} = operand({text}, _like, {_shape(update.sizes)})")
        every = states_var(self.names, d.name, "new")
        return lines + [f"{every} = {self.scan_function}({made[0]}, {made[1]}, {name}"
                        f"{self.scan_args()})"]

    def loop(self, first: str, blocks, outputs, unbound) -> list[str]:
        states = [py_name(d.name) for d in self.ir.states]
        every = {s: self.names.fresh(f"_{s}_all") for s in states}  # all steps of a state
        lines = [f"B, T = {first}.shape[:2]"] + blocks[Place.HOIST]
        if not states:  # a cell without state: every statement is hoisted, nothing scans
            return lines
        if unbound:
            lines.append("# the sequences the loop body reads, as B·T tokens")
        lines += [f"{tokens} = {var}.flatten(0, 1)" for var, tokens in unbound.items()]
        stepwise = [n for n, home in outputs if home == Place.LOOP]
        outs = ", ".join(f'"{n.arg}": {py_name(n.arg)}' for n in stepwise)
        lines += [f"def _tokens(B, {', '.join(states)}):",
                  INDENT + '"""The loop body on B tokens at once (here B = B·T)."""']
        lines += [INDENT + line for line in blocks[Place.LOOP]]
        new = "".join(f"{s}, " for s in states).rstrip(" ")  # `h,`; none for a stateless cell
        lines.append(INDENT + f"return {{{outs}}}, ({new})")
        filled = {fill: [f"{s}.new_full((), {fill}).expand(B * T, *{s}.shape[1:])"
                         for s in states] for fill in (0, 1)}  # expand: nothing is filled
        lines.append("# h' = a h + b: b is the step from 0")
        lines.append(f"_, _from0 = _tokens(B * T, {', '.join(filled[0])})")
        if len(self.mixed) < len(states):
            lines.append("# elementwise a: a + b is the step from 1")
            lines.append(f"_, _from1 = _tokens(B * T, {', '.join(filled[1])})")
        for k, s in enumerate(states):
            name = self.ir.states[k].name
            if name in self.mixed:
                lines += self.dense_block(k, s, filled[0], every[s])
                continue
            lines += [f"# all states of {name}",
                      f"_b = _from0[{k}].reshape(B, T, *{s}.shape[1:])",
                      f"_a = _from1[{k}].reshape(B, T, *{s}.shape[1:]) - _b",
                      f"{every[s]} = {self.scan_function}(_a, _b, {s}{self.scan_args()})"]
        if stepwise:
            prev = [f"torch.cat([{s}[:, None], {every[s]}[:, :-1]], 1).flatten(0, 1)"
                    for s in states]
            lines.append("# the outputs of every step, from its previous states")
            lines.append(f"_outs, _ = _tokens(B * T, {', '.join(prev)})")
            lines += [f'{py_name(n.arg)} = _outs["{n.arg}"].unflatten(0, (B, T))'
                      for n in stepwise]
        lines += [f"{s} = {every[s]}[:, -1]" for s in states]
        return lines

    def dense_block(self, k: int, s: str, zeros: list[str], every: str) -> list[str]:
        """A state whose transition mixes some of its axes: the matrix column by column
        (the step from each basis vector along the mixed axes, minus b), then a dense
        scan in the layout with the mixed axes last and flattened."""
        d = self.ir.states[k]
        axes, dims = self.mixed[d.name]
        args = ", ".join("_e" if j == k else z for j, z in enumerate(zeros))
        seq_dims = tuple(x + 1 for x in dims)
        return [f"# all states of {d.name}: its transition mixes "
                f"{', '.join(axes)}, a matrix found from the basis "
                "vectors e",
                f"_a, _b = dense_transition(lambda _e: _tokens(B * T, {args})[1][{k}], "
                f"_from0[{k}], {dims})",
                f"{every} = dense_scan(_a.unflatten(0, (B, T)), _b.unflatten(0, (B, T)), "
                f"mixed_last({s}, {dims}){self.scan_args()})",
                f"{every} = from_mixed_last({every}, {seq_dims}, (B, T, *{s}.shape[1:]))"]

    def forward(self, doc: str) -> str:
        """forward(): a and b printed where every state is updated elementwise, else the
        loop body on all tokens."""
        if not self.printed:
            return self.function("forward", doc, step=False)
        return self.elementwise_forward(doc)

    def source(self) -> str:
        header = self.header([
            f"{self.title} backend: h' = a h + b elementwise, over time by {self.scan_function};",
            "the loop body of the sequential backend runs on all tokens at once."])
        elementwise = self.printed or len(self.mixed) < len(self.ir.states)
        names = [self.scan_function] if elementwise else []  # else every state is dense
        if self.mixed:
            names += ["dense_scan", "dense_transition", "from_mixed_last", "mixed_last"]
        imports = ["import torch", "",
                   f"from reclang.runtime.{self.runtime} "
                   f"import {', '.join(names)}"]
        if self.printed:
            imports.append("from reclang.runtime.operands import operand")
        forward = self.forward(f"Runs {self.ir.name} over whole sequences with a scan: inputs "
                               "[B, T, ...], states are the initial ones; returns (outputs, "
                               "final states).")
        return "\n".join(header + imports) + "\n\n\n" + forward + "\n\n\n" + \
            self.step_function() + "\n"
