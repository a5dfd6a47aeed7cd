"""The newton backend's printed step (backends/newton.py), for a cell with a lane form
(reclang/analysis/lanes.py): the step f and the entries of its Jacobian, sympy.diff of
the lane form's scalar equations (as KernelCode differentiates them for the fused
kernels), printed as elementwise PyTorch code on tokens, f and J together with their
common subexpressions computed once (sympy.cse); the gates stay named functions
(torch.sigmoid, softplus: stable, as in the kernels).

Per unit n of every state i, with r_k = Σ_m W_k[n, m] s_{state(k)}[m] the lane form's
weighted sums (none for a diagonal or per-unit block-diagonal cell),

    ∂f_i[n]/∂s_j[m] = δ_nm ∂f_i/∂s_j + Σ_{k: state(k) = j} ∂f_i/∂r_k W_k[n, m]

so the printed `linearized` returns the scalar derivatives ∂f_i/∂s_j and ∂f_i/∂r_k per
unit, and the weights, and reclang/runtime/newton.py assembles J in its layout.

The generated functions (the interface to reclang/runtime/newton.py's Solver):
    prelude(*inputs, **params) -> ({}, (the time-varying operands [B, T, *units], ...))
    core(*operands, *states, **params) -> ({output: [N, *units]}, {state: [N, *units]})
    linearized(*operands, *states, **params) -> (new states, ∂f/∂s [i][j], ∂f/∂r [i][k],
                                                 ((W_k [*heads, units, units], state(k)), ...))
on N tokens [N, *units]; a derivative may be a Python number (0 where f_i does not read
s_j). The lane form's symbols are written `_o3`, `_s_h`, `_r0`, `_e5` (cse), which no spec
name can be (spec names begin with a letter).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy

from reclang.analysis.lanes import KEY, LANE, LaneForm, Unsupported
from reclang.ir import IR
from reclang.schedule import LoopSchedule

from .fused_loop import FusedProgram, KernelCode
from .ir_to_torch import ATOM, Code
from .loop import INDENT
from .names import Names, py_name
from .sympy_to_torch import SympyLowering


class _Lowering(SympyLowering):
    """sympy_to_torch's printer, and sympy's Heaviside (the derivative of max and relu):
    1/2 at a tie, as torch.maximum's gradient and the kernels' _heaviside."""

    def _lower(self, expr) -> Code:
        if isinstance(expr, sympy.Heaviside):
            x = self._lower(expr.args[0])
            return Code(f"newton.heaviside({x.text})", ATOM, x.axes)
        return super()._lower(expr)


@dataclass(frozen=True)
class StepCode:
    prelude: str
    core: str
    linearized: str
    outputs: dict[str, str] | None  # output -> the state it is, where every output is one


def step_code(ir: IR, form: LaneForm) -> StepCode:
    """The three functions' source, or NotImplementedError (a function PyTorch code here
    cannot spell) / Unsupported (no operand varies with time: nothing to solve for)."""
    return _Printer(ir, form).code()


class _Printer:
    def __init__(self, ir: IR, form: LaneForm):
        self.ir, self.form = ir, form
        # the fused loop's program prints the operands and weights (spec axes, broadcasts)
        self.program = FusedProgram(ir, form, LoopSchedule(), "")
        self.program.sympy.names, self.program.sympy.definitions = Names(ir), []
        self.units = [str(s) for s in (*form.head_symbols, LANE)]
        self.shape = "(" + ", ".join(map(str, (*form.heads, form.lanes))) + ",)"
        self.varying = [o for o in form.operands if o.time_varying]
        if not self.varying:
            raise Unsupported(f"{ir.source.filename.rsplit('/', 1)[-1]}: no value of the "
                              "step varies with time")
        self.rename = {s: sympy.Symbol(f"_{s}", real=True) for s in
                       [*(o.symbol for o in form.operands), *form.prev.values(),
                        *(w.symbol for w in form.weights)]}
        self.tokens = {self.rename[s] for s in [*(o.symbol for o in self.varying),
                                                *form.prev.values(),
                                                *(w.symbol for w in form.weights)]}
        self.printer = _Lowering(ir, {})
        self.comments = KernelCode(form, ir).comments()

    def name(self, symbol) -> str:
        return str(self.rename[symbol])

    def code(self) -> StepCode:
        f = self.form
        states = [self.name(f.prev[s]) for s in f.states]
        new = [f"_new_{py_name(s)}" for s in f.states]
        outputs = [f"_y_{py_name(y)}" for y in f.outputs]
        core = self.statements([*zip(new, (f.updates[s] for s in f.states)),
                                *zip(outputs, f.outputs.values())], "_e")
        returns = "return {" + ", ".join(f'"{y}": {v}' for y, v in zip(f.outputs, outputs)) + \
            "}, {" + ", ".join(f'"{s}": {v}' for s, v in zip(f.states, new)) + "}"
        d_state = [[(f"_d_{i}_{j}", sympy.diff(f.updates[s], f.prev[t]))
                    for j, t in enumerate(f.states)] for i, s in enumerate(f.states)]
        d_weight = [[(f"_d_{i}_r{k}", sympy.diff(f.updates[s], w.symbol))
                     for k, w in enumerate(f.weights)] for i, s in enumerate(f.states)]
        linear = self.statements([*zip(new, (f.updates[s] for s in f.states)),
                                  *(x for row in d_state + d_weight for x in row)], "_e")
        index = {s: i for i, s in enumerate(f.states)}
        weights = "".join(f"(_w{k}, {index[w.state]}), " for k, w in enumerate(f.weights))
        linear_returns = (f"return ({''.join(n + ', ' for n in new)}), "
                          f"{_nested(d_state)}, {_nested(d_weight)}, ({weights})")
        args = ", ".join([self.name(o.symbol) for o in self.varying] + states)
        return StepCode(
            self.prelude(),
            self.function("core", args, "The step on tokens [N, *units]: (outputs, new "
                          "states).", core + [returns]),
            self.function("linearized", args, "The step and its derivatives on tokens "
                          "(reclang/codegen/newton_torch.py): (new states, ∂f_i/∂s_j, "
                          "∂f_i/∂r_k, the weights W_k with their states).",
                          linear + [linear_returns]),
            self.outputs_as_states())

    def outputs_as_states(self) -> dict[str, str] | None:
        f = self.form
        same = {y: next((s for s in f.states if f.updates[s] == e), None)
                for y, e in f.outputs.items()}
        return same if None not in same.values() else None

    def statements(self, named: list[tuple[str, sympy.Expr]], prefix: str) -> list[str]:
        """`name = expr` with the common subexpressions once; a value that reads no token
        (a number, params alone) broadcast to the tokens' shape."""
        exprs = [e.xreplace(self.rename) for _, e in named]
        temps, reduced = sympy.cse(exprs, symbols=sympy.numbered_symbols(prefix, real=True),
                                   order="none")
        lines = [f"{t} = {self.printer.lower(e).text}" for t, e in temps]
        for (name, _), e, full in zip(named, reduced, exprs):
            text = self.printer.lower(e).text
            if not full.free_symbols & self.tokens and not name.startswith("_d_"):
                text = f"newton.tokens({text}, _like)"
            lines.append(f"{name} = {text}")
        return self.comments + lines

    def prelude(self) -> str:
        ins = [py_name(d.name) for d in self.ir.inputs]
        lines = [f"_like = {ins[0]}"]
        for o in self.varying:
            lines.append(f"# {self.program.note(self.rename[o.symbol], o.expr)}")
            lines.append(f"{self.name(o.symbol)} = "
                         f"{self.program.tensor(o.expr, self.units, self.shape, 'operand')}")
        lines.append("return {}, (" + "".join(f"{self.name(o.symbol)}, "
                                              for o in self.varying) + ")")
        return self.function("prelude", ", ".join(ins), "The lane form's time-varying "
                             "operands on inputs [B, T, ...]: ({}, the operands).", lines)

    def constants(self) -> list[str]:
        """The operands of params alone and the weights, and the weighted sums r_k."""
        f, lines = self.form, []
        for o in (o for o in f.operands if not o.time_varying):
            lines.append(f"# {self.program.note(self.rename[o.symbol], o.expr)}")
            lines.append(f"{self.name(o.symbol)} = "
                         f"{self.program.tensor(o.expr, self.units, self.shape, 'constant')}")
        square = "(" + ", ".join(map(str, (*f.heads, f.lanes, f.lanes))) + ",)"
        for k, w in enumerate(f.weights):
            lines.append(f"# {self.program.note(w.symbol, w.expr)} {w.state}[key]")
            text = self.program.tensor(w.expr, (*self.units, str(KEY)), square, "constant")
            lines.append(f"_w{k} = {text}")
            s = self.name(f.prev[w.state])
            lines.append(f"{self.name(w.symbol)} = (_w{k} @ {s}.unsqueeze(-1)).squeeze(-1)")
        return lines

    def function(self, name: str, args: str, doc: str, body: list[str]) -> str:
        params = [py_name(d.name) for d in self.ir.params]
        star = ", *, " + ", ".join(params) if params else ""
        if name != "prelude":
            first = self.name(self.form.prev[self.form.states[0]])
            body = [f"_like = {first}", *self.constants(), *body]
        # the named constants and the dtype that this function's lines read
        text = "\n".join(body)
        definitions = [line for line in self.program.sympy.definitions +
                       self.printer.definitions if _reads(text, line.split(" = ")[0])]
        if _reads(text + "\n".join(definitions), "_dtype") or _reads(text, "_device"):
            definitions = ["_dtype, _device = _like.dtype, _like.device", *definitions]
        body = body[:1] + definitions + body[1:]
        return "\n".join([f"def {name}({args}{star}):", INDENT + f'"""{doc}"""'] +
                         [INDENT + line for line in body])


def _reads(text: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def _nested(rows: list[list[tuple[str, sympy.Expr]]]) -> str:
    """((a, b, ), (c, d, ), ) of the rows' names."""
    return "(" + "".join("(" + "".join(f"{n}, " for n, _ in row) + "), " for row in rows) + ")"
