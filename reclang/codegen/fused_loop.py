"""The program of the triton backend for nonlinear cells (reclang/backends/triton_loop.py):
the lane form's operands, and the step and its derivatives printed for the fused loop's
kernel."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import sympy
from sympy.printing.str import StrPrinter

from reclang.analysis.forms import Lanes
from reclang.analysis.lanes import KEY, LANE, LaneForm, Operand
from reclang.functions import PRINTED, TRITON
from reclang.ir import IR
from reclang.schedule import FusedLoopSchedule, Schedule

from .chunk import StatesLowering, epilogue, states_var
from .ir_to_torch import align, comment, number, spec_origin
from .loop import INDENT, Program, py_name
from .names import Names
from .sympy_to_torch import SympyLowering, spec_text


class TritonPrinter(StrPrinter):
    """sympy scalar expressions as Triton code (tensors of one program's tile)."""

    FUNCTIONS = TRITON  # sympy function -> its spelling: a view of the function table

    def _print_Function(self, expr):
        if expr.func not in self.FUNCTIONS:
            raise NotImplementedError(f"cannot print {expr.func} in a Triton kernel")
        return self.FUNCTIONS[expr.func].format(*(self._print(a) for a in expr.args))

    def _print(self, expr, **kwargs):
        """Every applied function by the table (sympy's printer has methods of its own
        for exp, Abs, ...), but those the printer writes itself."""
        if isinstance(expr, sympy.Function) and not isinstance(expr, PRINTED):
            return self._print_Function(expr)
        return super()._print(expr, **kwargs)

    def __init__(self, like: str):
        super().__init__()
        self.like = like  # a tile of the equations' dtype, for constants alone

    def _print_Heaviside(self, expr):
        return f"_heaviside({self._print(expr.args[0])})"

    def _print_Max(self, expr):
        return self._nested("tl.maximum", expr.args)

    def _print_Min(self, expr):
        return self._nested("tl.minimum", expr.args)

    def _nested(self, fn, args):
        text = self._print(args[0])
        for a in args[1:]:
            text = f"{fn}({text}, {self._print(a)})"
        return text

    def _print_Piecewise(self, expr):
        text = self._print(expr.args[-1][0])
        if all(value.is_Number for value, _ in expr.args):  # else a float32 where
            text = f"tl.full({self.like}.shape, {text}, {self.like}.dtype)"
        for value, cond in reversed(expr.args[:-1]):
            text = f"tl.where({self._print(cond)}, {self._print(value)}, {text})"
        return text

    def _print_Relational(self, expr):
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    SQRT, ONE = "tl.sqrt", "1.0"  # the spellings _print_Pow needs (C++ has its own)

    def _print_Pow(self, expr, rational=False):
        base, e = expr.args
        if expr.is_number and expr.is_real:  # sqrt(2): tl.sqrt(2.0) would be float32
            return self._number(float(expr))
        b = self.parenthesize(base, 1000)  # always wrapped unless atomic
        if e == sympy.Rational(1, 2):
            return f"{self.SQRT}({self._print(base)})"
        if e == -sympy.Rational(1, 2):
            return f"({self.ONE} / {self.SQRT}({self._print(base)}))"
        if e.is_Integer and 0 < e <= 4:
            return "(" + " * ".join([b] * int(e)) + ")"
        if e.is_Integer and -4 <= e < 0:
            return f"({self.ONE} / (" + " * ".join([b] * int(-e)) + "))"
        return self._power(base, e)

    def _power(self, base, e) -> str:
        return f"tl.exp({self.parenthesize(e, 50)} * tl.log({self._print(base)}))"

    @staticmethod
    def _number(value: float) -> str:
        return number(value)

    def _print_Rational(self, expr):
        return number(float(expr))

    def _print_Float(self, expr):
        return number(float(expr))

    def _print_Integer(self, expr):
        return number(float(expr))

    def _print_Infinity(self, expr):
        return number(math.inf)

    def _print_NegativeInfinity(self, expr):
        return number(-math.inf)

    def _print_NaN(self, expr):
        return number(math.nan)

    @classmethod
    def spells(cls, func) -> bool:
        """Whether a sympy function (a class: sympy.tanh, Sigmoid) has a Triton spelling
        here: in FUNCTIONS, or a printing method of this printer's own other than the
        one that prints FUNCTIONS."""
        method = cls.__dict__.get(f"_print_{func.__name__}")
        return func in cls.FUNCTIONS or method not in (None, cls.__dict__["_print_Function"])

    def _print_Exp1(self, expr):
        return repr(math.e)

    def _print_Pi(self, expr):
        return repr(math.pi)


# The functions of backends/templates/gates.py.jinja: a file holds those its equations call.
GATES = ("_tanh", "_softplus", "_logsigmoid", "_heaviside", "_sign", "_relu", "_clamp")


def operands_import(*code: str) -> list[str]:
    """The import of reclang/runtime/operands.py's helpers that the code calls (none
    where an input's operands are one matmul and nothing is constant)."""
    used = [n for n in ("constant", "operand") if any(f"{n}(" in text for text in code)]
    return [f"from reclang.runtime.operands import {', '.join(used)}"] if used else []


def gates_called(*code: str) -> list[str]:
    """The gate functions that the printed equations call."""
    return [g for g in GATES if any(f"{g}(" in text for text in code)]


class KernelCode:
    """The cell's equations and their derivatives as Triton statements."""

    def __init__(self, form: LaneForm, ir: IR):
        self.form, self.ir = form, ir
        self.file = ir.source.filename.rsplit("/", 1)[-1]
        self.states = [str(form.prev[s]) for s in form.states]
        self.printer = TritonPrinter(self.states[0])
        self.new = [f"new_{py_name(s)}" for s in form.states]
        # in the kernel, spec names are behind prefixes no name of the template has
        self.outputs = [f"y_{py_name(y)}" for y in form.outputs]

    def statements(self, named: list[tuple[str, sympy.Expr]], prefix: str) -> list[str]:
        """`name = expr` lines with common subexpressions factored out (sympy.cse)."""
        temps, reduced = sympy.cse([e for _, e in named],
                                   symbols=sympy.numbered_symbols(prefix, real=True),
                                   order="none")
        lines = [f"{t} = {self.printer.doprint(e)}" for t, e in temps]
        for (name, _), e in zip(named, reduced):
            lines.append(f"{name} = {self.printer.doprint(e)}")
        return lines

    def forward(self) -> str:
        f = self.form
        named = [(n, f.updates[s]) for n, s in zip(self.new, f.states)]
        named += [(n, f.outputs[y]) for n, y in zip(self.outputs, f.outputs)]
        lines = self.comments()
        return "\n".join(lines + self.statements(named, "e"))

    def comments(self) -> list[str]:
        """The spec lines the step's statements come from, in the spec's order."""
        numbers = sorted({self.form.lines[name] for name in (*self.form.states,
                                                             *self.form.outputs)}
                         | self.form.step_lines)
        return [f"# {spec_origin(self.ir, n)}" for n in numbers]

    def backward(self) -> str:
        """∂L/∂(previous states, products, operands) of L = Σ g·f + Σ dy·g."""
        f = self.form
        grads = self.grads
        loss = sum((sympy.Symbol(g, real=True) * f.updates[s]
                    for g, s in zip(grads, f.states)), sympy.Integer(0))
        loss += sum((sympy.Symbol(d, real=True) * f.outputs[y]
                     for d, y in zip(self.d_outputs, f.outputs)), sympy.Integer(0))
        wrt = [f.prev[s] for s in f.states] + [w.symbol for w in f.weights] + \
            [o.symbol for o in f.operands]
        named = [(f"d_{x}", sympy.diff(loss, x)) for x in wrt]
        lines = ["# the derivatives of the step (sympy.diff of the equations above)"]
        return "\n".join(lines + self.statements(named, "e"))

    @property
    def grads(self) -> list[str]:
        return [f"g_{py_name(s)}" for s in self.form.states]

    @property
    def d_outputs(self) -> list[str]:
        return [f"dy_{py_name(y)}" for y in self.form.outputs]

    def carries(self) -> list[list[str]]:
        """∂L/∂s_{t-1} beyond the step's own part: Σ_j ∂L/∂r_j W_j over its products,
        as the terms added to each state's gradient."""
        J = len(self.form.weights)
        return [[f"_times(d_r_ptr + (t * {J} + {j}) * slab, rows_at, rows < B, "
                 f"w_ptr + ({j} * HEADS + head) * N * N, False, N, BLOCK_B, BLOCK_N)"
                 for j, w in enumerate(self.form.weights) if w.state == s]
                for s in self.form.states]

    def slots(self, about: str) -> dict:
        f = self.form
        index = {s: i for i, s in enumerate(f.states)}
        forward, backward = self.forward(), self.backward()
        return dict(
            name=self.ir.name, about=comment(about),
            consts=[str(o.symbol) for o in f.operands if not o.time_varying],
            ops=[str(o.symbol) for o in varying_operands(f, self.ir)],
            states=self.states, new=self.new, outputs=self.outputs,
            products=[(str(w.symbol), index[w.state]) for w in f.weights],
            forward=forward, backward=backward, gates=gates_called(forward, backward),
            backward_reads=[x for x in self.states if re.search(rf"\b{x}\b", backward)],
            grads=self.grads,
            d_outputs=self.d_outputs, carries=self.carries(),
            state_of_product=str([index[w.state] for w in f.weights]))


@dataclass(frozen=True)
class WeightedSum:
    """An operand Σ_keys coef[unit, keys] x[keys] + bias[unit]: a weighted sum over all
    the axes of one input, plus terms of params alone (0 when there are none)."""
    operand: Operand
    input: str
    keys: tuple[sympy.Symbol, ...]  # the summed symbols, in the order of the input's axes
    coef: sympy.Expr                # over the unit symbols and keys, params alone
    bias: sympy.Expr


def weighted_sum(o: Operand, form: LaneForm, ir: IR) -> WeightedSum | None:
    """The operand as a weighted sum over one input whose weights differ for every unit
    (None when it is not one: a sum the units share, Mamba's B[n] for every d, is cheaper
    computed once and broadcast)."""
    inputs = {d.name for d in ir.inputs}
    terms = sympy.Add.make_args(o.expr)
    sums = [t for t in terms if isinstance(t, sympy.Sum)]
    bias = sympy.Add(*(t for t in terms if not isinstance(t, sympy.Sum)))
    if len(sums) != 1 or _reads(bias, inputs):
        return None
    summand, limits = sums[0].function, sums[0].limits
    read = [x for x in summand.atoms(sympy.Indexed) if str(x.base) in inputs]
    if len(read) != 1:
        return None
    x = read[0]
    factors = sympy.Mul.make_args(summand)
    sizes = ir.decls[str(x.base)].shape
    whole = {(k, 0, n - 1) for k, n in zip(x.indices, sizes)}  # every axis, all of it
    if factors.count(x) != 1 or len(set(x.indices)) != len(sizes) or set(limits) != whole:
        return None
    coef = sympy.Mul(*(f for f in factors if f != x))
    if _reads(coef, inputs) or not {*form.head_symbols, LANE} <= coef.free_symbols:
        return None
    return WeightedSum(o, str(x.base), tuple(x.indices), coef, bias)


def _reads(expr: sympy.Expr, inputs: set[str]) -> bool:
    """Whether an expression reads an input (indexed, or a scalar one)."""
    names = {str(x.base) for x in expr.atoms(sympy.Indexed)} | \
        {str(s) for s in expr.free_symbols}
    return bool(names & inputs)


def operand_groups(form: LaneForm, ir: IR) -> list[list]:
    """The time-varying operands in the order the kernels read them, in groups: the
    weighted sums over one input together (a list of WeightedSum: one matmul in
    forward), each other operand alone (a list of one Operand); a group where its first
    member is."""
    groups: list[list] = []
    by_input: dict[str, list] = {}
    for o in (o for o in form.operands if o.time_varying):
        s = weighted_sum(o, form, ir)
        if s is None:
            groups.append([o])
        elif s.input in by_input:
            by_input[s.input].append(s)
        else:
            groups.append(by_input.setdefault(s.input, [s]))
    return groups


def varying_operands(form: LaneForm, ir: IR) -> list[Operand]:
    """The time-varying operands in the order of operand_groups: the kernels' `ops`."""
    return [x.operand if isinstance(x, WeightedSum) else x
            for group in operand_groups(form, ir) for x in group]


def spec_axes(ir: IR, form: LaneForm) -> dict:
    """The lane form's unit symbols (head0.., lane) -> the spec's axes of the first state's
    update (Mamba's d, n), where those are distinct and not `key` (the weights' column)."""
    axes = ir.update(form.states[0]).axes
    units = (*form.head_symbols, LANE)
    if len(set(axes)) != len(axes) or str(KEY) in axes or len(axes) != len(units):
        return {u: u for u in units}
    return {u: sympy.Symbol(a, integer=True) for u, a in zip(units, axes)}


class FusedProgram(Program):
    """forward(): the operands and weights in PyTorch, then the fused kernel."""

    PAD = "pad_packed"  # packed sequences' operands as a batch (reclang/runtime/packing.py)

    def __init__(self, ir: IR, form: LaneForm, schedule: Schedule, summary: str):
        super().__init__(ir, schedule, summary)
        self.form = form
        self.axes = spec_axes(ir, form)
        sizes = {self.axes[s]: n for s, n in zip((*form.head_symbols, LANE),
                                                 (*form.heads, form.lanes))}
        self.sympy = SympyLowering(ir, {**{str(s): n for s, n in sizes.items()},
                                        str(KEY): form.lanes})
        self.lines: list[str] = []

    def spec(self, expr):
        """An expression of the lane form over the spec's own axes (d, n for head0, lane)."""
        return expr.xreplace(self.axes)

    def note(self, symbol, expr) -> str:
        """`o_W = sum(d: W[n, d]*x[d])`: what a symbol of the kernel stands for."""
        if symbol in {w.symbol for w in self.form.weights}:  # r_j = Σ_key W_j[n, key] s[key]
            return comment(f"{symbol} = Σ_key {spec_text(self.spec(expr), self.ir)}")
        return comment(f"{symbol} = {spec_text(self.spec(expr), self.ir)}")

    def tensor(self, expr, axes: tuple, shape: str, how: str) -> str:
        """An expression over `axes` as PyTorch code broadcast to `shape`."""
        names = {str(k): str(v) for k, v in self.axes.items()}
        expr, axes = self.spec(expr), tuple(names.get(a, a) for a in axes)
        code = self.sympy.lower(expr)
        text = code.text if code.const else align(code, axes).text
        return f"{how}({text}, _like, {shape})"

    def stacked(self, name: str, items, axes, shape: str, how: str, empty: str, layout: str):
        """`name = torch.stack([...]).<layout>`, one item a line, or `empty` (which has
        the layout already) when there are none."""
        if not items:
            self.lines.append(f"{name} = {empty}")
            return
        self.lines.append(f"{name} = torch.stack([")
        self.lines += [f"    {self.tensor(e, axes, shape, how)}," for e in items]
        self.lines.append("])" + layout)

    def varying(self, unit: list[str], shape: str):
        """`_ops` [T, O, B, HEADS, N], laid out [B, T, O, HEADS, N] (the cpu kernel's
        layout, a view of it): each group of weighted sums over one input is one matmul
        with its biases (F.linear) written there, the other operands beside them."""
        f = self.form
        H, N = math.prod(f.heads), f.lanes
        parts = self.parts(unit, shape)
        if not parts:
            self.lines.append(f"_ops = _like.new_empty((T, 0, B, {H}, {N}))")
            return
        if len(parts) == 1:
            self.lines.append(f"_ops = {parts[0]}.permute(1, 2, 0, 3, 4)")
            return
        self.lines.append("_ops = torch.cat([")
        self.lines += [f"    {p}," for p in parts]
        self.lines.append("], dim=2).permute(1, 2, 0, 3, 4)")

    def parts(self, unit: list[str], shape: str) -> list[str]:
        """The operands' tensors [B, T, k, HEADS, N], one for each of self.groups()."""
        f = self.form
        H, N = math.prod(f.heads), f.lanes
        return [self.linear(group, unit) if isinstance(group[0], WeightedSum) else
                f"{self.tensor(group[0].expr, unit, shape, 'operand')}.reshape(B, T, 1, {H}, "
                f"{N})" for group in self.groups()]

    def groups(self) -> list[list]:
        """The operands in the groups forward makes them in (operand_groups)."""
        return operand_groups(self.form, self.ir)

    def linear(self, sums: list[WeightedSum], unit: list[str]) -> str:
        """Weighted sums over one input as one matmul: the rows of their coefficients
        (one operand's units after another's) and their biases concatenated, then
        F.linear: torch.nn's one GEMM with the bias fused. Defines the weight and bias."""
        f, x = self.form, sums[0].input
        keys, sizes = sums[0].keys, self.ir.decls[x].shape
        self.sympy.sizes.update({str(k): n for k, n in zip(keys, sizes)})  # keys as values
        names = self.sympy.names
        w, b = names.fresh(f"_{py_name(x)}_weight"), names.fresh(f"_{py_name(x)}_bias")
        square = "(" + ", ".join(map(str, (*f.heads, f.lanes, *sizes))) + ",)"
        shape = "(" + ", ".join(map(str, (*f.heads, f.lanes))) + ",)"
        columns = math.prod(sizes)
        self.lines.append(f"# {', '.join(str(s.operand.symbol) for s in sums)}: "
                          f"weighted sums over all of {x}, one matmul")
        coefs = [s.coef.xreplace(dict(zip(s.keys, keys))) for s in sums]
        self.stacked(w, coefs, (*unit, *map(str, keys)), square, "constant", "",
                     f".reshape(-1, {columns})")
        if all(s.bias == 0 for s in sums):
            self.lines.append(f"{b} = None")
        else:
            self.stacked(b, [s.bias for s in sums], unit, shape, "constant", "", ".reshape(-1)")
        value = py_name(x) + ("" if x == self.ir.inputs[0].name else ".to(_dtype)")
        return (f"torch.nn.functional.linear({value}.reshape(B, T, {columns}), {w}, {b})"
                f".reshape(B, T, {len(sums)}, {math.prod(f.heads)}, {f.lanes})")

    def forward(self) -> str:
        f = self.form
        heads = [str(s) for s in f.head_symbols]
        H = math.prod(f.heads)
        N = f.lanes
        unit = heads + [str(LANE)]
        shape = "(" + ", ".join(map(str, (*f.heads, N))) + ",)"
        first = py_name(self.ir.inputs[0].name)
        self.sympy.names, self.sympy.definitions = Names(self.ir), []
        self.lines = [f"B, T = {first}.shape[:2]", f"_like = {first}",
                      "_dtype, _device = _like.dtype, _like.device"]
        consts = [o for o in f.operands if not o.time_varying]
        self.lines.append("# operands: what a step reads that depends on no state")
        self.lines += [f"#   {self.note(o.symbol, o.expr)}" for o in f.operands]
        self.varying(unit, shape)
        self.stacked("_consts", [o.expr for o in consts], unit, shape, "constant",
                     f"_like.new_empty((0, {H}, {N}))", f".reshape(-1, {H}, {N})")
        self.lines.append("# weights: r_j = Σ_key W_j[unit, key] s[key]")
        self.lines += [f"#   {self.note(w.symbol, w.expr)} {w.state}[key]" for w in f.weights]
        square = "(" + ", ".join(map(str, (*f.heads, N, N))) + ",)"
        self.stacked("_w", [w.expr for w in f.weights], tuple(unit + [str(KEY)]), square,
                     "constant", f"_like.new_empty((0, {H}, {N}, {N}))",
                     f".reshape(-1, {H}, {N}, {N})")
        states = [py_name(s) for s in f.states]
        self.lines.append(f"_h0 = torch.stack([{', '.join(states)}]).reshape({len(states)}, -1, "
                          f"{H}, {N}).to(_dtype)")
        self.lines += [
            "_starts = None",
            "if cu_seqlens is not None:  # padded at the front to the longest: one launch",
            f"    _ops, _starts = {self.PAD}(_ops, cu_seqlens)",
            "_out, _last = fused_loop(_ops, _consts, _w, _h0, _starts)",
            "if cu_seqlens is not None:",
            "    _out = unpad_packed(_out, cu_seqlens, _starts)"]
        dims = ", ".join(map(str, (*f.heads, N)))
        names, needs = self.sympy.names, set(self.sympy.needs)
        held = {y: states_var(names, s, which) for (which, s), y in f.states_out.items()}
        for k, y in enumerate(f.outputs):
            self.lines.append(f"{held.get(y, py_name(y))} = _out[:, {k}].transpose(0, 1)"
                              f".reshape(B, T, {dims})")
        outputs = list(f.outputs)
        if f.states_out:  # the outputs from the states of every step, after the loop
            given = {self.ir.update(s).id: states_var(names, s, "new") for s in f.states}
            self.lines += epilogue(self.ir, given, StatesLowering, names, needs)
            outputs = [n.arg for n in self.ir.outputs]
        for k, s in enumerate(states):
            self.lines.append(f"{s} = _last[{k}].reshape(-1, {dims})")
        outs = ", ".join(f'"{y}": {py_name(y)}' for y in outputs)
        sts = ", ".join(f'"{s}": {py_name(s)}' for s in f.states)
        self.lines.append(f"return {{{outs}}}, {{{sts}}}")
        if "dtype" not in needs:  # no torch.arange: no _device
            self.lines[2] = "_dtype = _like.dtype"
        self.lines[3:3] = self.sympy.definitions
        doc = (f'"""Runs {self.ir.name} over whole sequences in the fused kernel: inputs '
               '[B, T, ...], states are the initial ones; returns (outputs, final states)."""')
        signature, doc = self.packed_signature(doc)
        return "\n".join([signature, INDENT + doc] + [INDENT + line for line in self.lines])


def fused_program(ir: IR, form: Lanes, schedule: FusedLoopSchedule, summary: str):
    """The program and the kernel slots of a nonlinear cell."""
    return FusedProgram(ir, form.lanes, schedule, summary), KernelCode(form.lanes, ir)
