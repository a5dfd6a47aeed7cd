"""The lane form of a nonlinear cell, for a fused kernel that runs its whole time loop.

LSTM, GRU, sLSTM and their kin cannot be parallelized over time, but their step has a
shape a kernel can keep on chip: every state has the same units (`lanes`, the last
axis, behind optional head axes), and a step is

    r_j = W_j s_{j,t-1}                      recurrent matrix products (per head)
    s_t[n] = f(s_{t-1}[n], r[n], o_t[n])     a scalar function per unit n
    y_t[n] = g(s_{t-1}[n], r[n], o_t[n])

where the operands o_t are values that depend on no state (the input projections,
biases, peepholes: computed for all steps at once before the kernel) and the weights
W_j are functions of params alone. `lane_form(ir)` finds f, g, the operands and the
weights as sympy expressions: f and g over plain symbols (one per previous state,
product and operand), the operands and weights over `Indexed` inputs and params with
the symbols `HEADS` and `LANE` (and `KEY` for the weights' columns) as their indices.
Because f and g are scalar sympy expressions, the backward is their symbolic
derivative (sympy.diff), printed into the same kernel.

With `gates` (the gated scan of diagonal cells, reclang/codegen/gated_scan.py, and the fused
loop), a state-free value that is an elementwise function of time-varying ones (a
gate sigmoid(W x + b), a log decay -8 softplus(Λ) r) stays in f and g rather than
becoming an operand, so that the kernel computes it: the operands are then the inputs,
the sums (W x) and the values of params alone that it is computed from.

Gate functions are kept as named functions (sigmoid, logsigmoid, softplus: the rows of
reclang/functions.py marked `named`) whose derivatives are written in terms of
themselves, so that neither the forward nor the backward evaluates the exp(-x) of a
large negative x that 1/(1 + exp(-x)) would. A function without a Triton spelling or a
derivative in the table is refused inside the recurrence (the kernels print the step and
differentiate it); as a gate of state-free values it becomes an operand, computed
before the kernel.

What does not fit raises `Unsupported` with the place in the spec: states of different
sizes, a unit reading another unit of a state except through a weighted sum over all
of them, a matrix that changes with time, a sum over the units outside such a product.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from ..functions import KERNEL, derivative, has_triton
from ..ir import IR, IndexExpr, Node, Op
from .partition import Phase
from .substeps import substeps
from .terms import Expander, NotAffine

LANE = sympy.Symbol("lane", integer=True)   # the unit a scalar expression is about
KEY = sympy.Symbol("key", integer=True)     # the column of a recurrent weight
LANE_LIMIT = 256  # units per head: a program holds [16, N] tiles of every state and temporary
#                   in registers; from N = 128 on ptxas spills some (docs/backends.md)


# IR functions on the scalar expressions of one unit (a view of the function table): the
# gates are named functions there (stable to print and to differentiate) and values real
# (a complex state is refused before any of these is called).
SCALAR = KERNEL


class Unsupported(Exception):
    """The cell does not fit the lane form; the message says why and where."""


@dataclass(frozen=True)
class Operand:
    symbol: sympy.Symbol
    expr: sympy.Expr        # over Indexed inputs/params, HEADS and LANE
    time_varying: bool      # reads an input (else: params only, loaded once)


@dataclass(frozen=True)
class Weight:
    symbol: sympy.Symbol    # r_j = Σ_key W_j[lane, key] s[key]
    expr: sympy.Expr        # over Indexed params, HEADS, LANE and KEY
    state: str


@dataclass
class LaneForm:
    heads: tuple[int, ...]              # sizes of the head axes (each head is separate)
    lanes: int                          # units per head
    states: list[str]                   # in declaration order
    prev: dict[str, sympy.Symbol]       # state -> the symbol of its previous value
    head_symbols: tuple[sympy.Symbol, ...]
    operands: list[Operand] = field(default_factory=list)
    weights: list[Weight] = field(default_factory=list)
    updates: dict[str, sympy.Expr] = field(default_factory=dict)   # state -> new value
    outputs: dict[str, sympy.Expr] = field(default_factory=dict)   # output -> value
    lines: dict[str, int] = field(default_factory=dict)  # state/output -> spec line
    step_lines: set[int] = field(default_factory=set)    # the lets the step computes
    # {(which, state): output}: the kernel's outputs are the states of every step, new
    # (after it) or prev (before it), and the cell's outputs are computed from them after
    # the loop (a readout Σ_n C[n] h[d, n] over the units); empty: outputs in the kernel
    states_out: dict[tuple[str, str], str] = field(default_factory=dict)


def states_as_outputs(ir: IR, form: LaneForm) -> None:
    """Makes the kernel's outputs the new values of every state and the previous values
    of those an output reads (form.states_out), for a form built with outputs=False."""
    for s in form.states:
        pairs = [("new", form.updates[s])]
        pairs += [("prev", form.prev[s])] if _output_reads_previous(ir, s) else []
        for which, value in pairs:
            name = f"_{which}_{s}"
            form.outputs[name], form.lines[name] = value, form.lines[s]
            form.states_out[(which, s)] = name


def _output_reads_previous(ir: IR, state: str) -> bool:
    """Whether an output reads the state's value before the step."""
    stack, seen = [i for i in ir.stmts if ir.node(i).op == Op.OUT], set()
    while stack:
        node = ir.node(stack.pop())
        if node.id in seen or node.op == Op.UPDATE:  # past an update: its new value
            continue
        seen.add(node.id)
        if node.op == Op.READ and node.args[0] == ir.leaves[state]:
            return True
        stack.extend(node.args)
    return False


def lane_form(ir: IR, gates: bool = False, lane_limit: int | None = LANE_LIMIT,
              outputs: bool = True, kernel: str = "the fused kernel") -> LaneForm:
    """The lane form of a cell, or `Unsupported` with a reason.

    `gates`: elementwise functions of time-varying, state-free values (a gate
    sigmoid(z), a log decay -8 softplus(Λ) r) stay in f and g, over operands that are
    the values they are computed from (inputs, sums such as W x, params), so that a
    kernel computes them instead of reading them. Without it every state-free value f
    reads is an operand. `lane_limit`: the most units per head (None: any).
    `outputs=False`: the updates only (outputs computed elsewhere, of any shape).
    `kernel`: what the refusals say cannot run the cell."""
    return _Lowering(ir, gates, lane_limit, outputs, kernel).run()


class _Lowering:
    def __init__(self, ir: IR, gates: bool = False, lane_limit: int | None = LANE_LIMIT,
                 outputs: bool = True, kernel: str = "the fused kernel"):
        self.ir = ir
        self.gates, self.lane_limit, self.outputs = gates, lane_limit, outputs
        self.kernel = kernel  # what cannot run the cell, in the refusals
        self.file = ir.source.filename.rsplit("/", 1)[-1]
        self.expander = Expander(ir)
        self.cache: dict = {}

    def shapes(self, states=None) -> str:
        """States with their shapes and where each is declared: h[4] (lmu.rec:9:11)."""
        return ", ".join(f"{d.name}{list(d.shape)} ({self.file}:{d.loc})"
                         for d in (self.ir.states if states is None else states))

    def fail(self, node: Node, why: str):
        # at the statement, unless the node lowers a construct of its own (a softmax)
        loc = node.loc if node.stmt < 0 or node.origin else \
            self.ir.node(self.ir.stmts[node.stmt]).loc
        raise Unsupported(f"{self.file}:{loc}: {why}")

    def run(self) -> LaneForm:
        ir = self.ir
        shapes = {d.shape for d in ir.states}
        if not ir.states or len(shapes) != 1 or not next(iter(shapes)):
            raise Unsupported(f"{self.file}: {self.kernel} needs states of one shape "
                              f"(heads..., units); here {self.shapes() or 'no state'}")
        complex_ = [d for d in ir.states if d.dtype != "real"]
        if complex_:
            raise Unsupported(f"{self.file}: {self.kernel} runs real states only; "
                              f"{self.shapes(complex_)} is complex")
        shape = next(iter(shapes))
        if self.lane_limit is not None and shape[-1] > self.lane_limit:
            raise Unsupported(f"{self.file}: {shape[-1]} units per head; {self.kernel} "
                              f"keeps at most {self.lane_limit} (every state and temporary "
                              f"of 16 sequences in registers): {self.shapes()}")
        heads = tuple(sympy.Symbol(f"head{i}", integer=True) for i in range(len(shape) - 1))
        self.full = heads + (LANE,)
        prev = {d.name: sympy.Symbol(f"s_{d.name}", real=True) for d in ir.states}
        self.form = LaneForm(shape[:-1], shape[-1], [d.name for d in ir.states], prev, heads)
        for i in ir.stmts:
            node = ir.node(i)
            if node.op == Op.LET or (node.op == Op.OUT and not self.outputs):
                continue
            if node.sizes != shape:
                self.fail(node, f"{node.arg} has shape {list(node.sizes)}, the states "
                          f"{list(shape)}: {self.kernel} computes one value per unit")
            env = dict(zip(node.axes, self.full))
            target = self.form.updates if node.op == Op.UPDATE else self.form.outputs
            target[node.arg] = self.value(node.args[0], env)
            self.form.lines[node.arg] = node.loc.line
        return self.form

    # ---- the scalar expression of one unit
    def value(self, i: int, env: dict) -> sympy.Expr:
        key = (i, tuple(sorted(env.items(), key=str)))
        if key not in self.cache:
            self.cache[key] = self._value(i, env)
        return self.cache[key]

    def _value(self, i: int, env: dict) -> sympy.Expr:
        node = self.ir.node(i)
        phase = self.expander.phase[i]
        if phase != Phase.CORE and not (phase == Phase.PRELUDE and self.gate(node)):
            return self.operand(self.expander.symbolic(i, env), node)
        if node.op == Op.READ:
            return self.read(node, env)
        if node.op == Op.FN:
            why = _unfit(node.arg)
            if why:
                self.fail(node, f"{node.arg} {why}: {self.kernel} cannot run it in its step")
            return SCALAR[node.arg](*(self.value(a, env) for a in node.args))
        if node.op == Op.REDUCE:
            return self.product(node, env)
        if node.op in (Op.LET, Op.UPDATE, Op.OUT):
            return self.value(node.args[0], env)
        self.fail(node, f"{node.op.name.lower()} inside the recurrence")

    def gate(self, node: Node) -> bool:
        """With `gates`: whether a state-free, time-varying node is computed in the
        step (an elementwise function, a let, a read of a let) rather than loaded."""
        if not self.gates:
            return False
        if node.op == Op.FN:
            return not _unfit(node.arg)
        if node.op == Op.READ:
            return self.ir.node(node.args[0]).op == Op.LET
        return node.op == Op.LET

    def read(self, node: Node, env: dict) -> sympy.Expr:
        source = self.ir.node(node.args[0])
        computed = next((s for s in node.arg if isinstance(s, IndexExpr)), None)
        if computed is not None:
            self.fail(node, f"reads {source.arg} at the computed subscript {computed}: "
                      f"{self.kernel} reads each unit's own values")
        index = tuple(env[s] if isinstance(s, str) else sympy.Integer(s) for s in node.arg)
        if source.op == Op.STATE:
            if index != self.full:
                self.fail(node, f"reads {source.arg} at another unit than its own: "
                          f"{self.kernel} mixes units only through a weighted sum over all "
                          "of them (sum(m: W[n, m] * h[m]))")
            return self.form.prev[source.arg]
        if self.expander.phase[source.id] != Phase.CONST:  # a let the step computes
            self.form.step_lines.add(source.loc.line)
        return self.value(source.args[0], dict(zip(source.axes, index)))

    def product(self, node: Node, env: dict) -> sympy.Expr:
        """A sum over units that reads states: Σ_terms Σ_key coef[lane, key] s[key]."""
        try:
            terms = self.expander.terms(node.id, env)
        except NotAffine as err:
            mixed = self.mixed_value(node)
            if mixed:
                self.fail(node, f"a sum over the units of {mixed}, which this step computes "
                          f"from the states: {self.kernel} mixes units only through "
                          "weighted sums of the previous step's states")
            self.fail(err.node if err.node.origin else node,
                      f"a sum over the units of a state that is {err.reason}: "
                      f"{self.kernel} mixes units only through weighted sums")
        total = sympy.Integer(0)
        for t in terms:
            if t.state is None:
                sums = [(s, 0, n - 1) for s, n in t.sums]
                total += self.operand(sympy.Sum(t.coef, *sums) if sums else t.coef, node)
                continue
            k = t.sums[-1][0] if len(t.sums) == 1 else None
            if k is None or t.index != self.full[:-1] + (k,):
                self.fail(node, f"the sum reads {t.state} other than as Σ_m W[.., n, m] "
                          f"{t.state}[.., m] within a head")
            bases = {str(x.base) for x in t.coef.atoms(sympy.Indexed)}
            if any(self.ir.decls[b].kind != "param" for b in bases if b in self.ir.decls):
                self.fail(node, f"the matrix multiplying {t.state} changes with time; "
                          f"{self.kernel} takes weights computed once, before its loop")
            total += self.weight(t.coef.subs(k, KEY), t.state)
        return total

    def mixed_value(self, node: Node) -> str:
        """The value of this step that a sum reads along its summed index, in words
        (a for block's sub-step by its state and iteration), or ""."""
        reduced, stack = set(node.arg[1]), list(node.args)
        while stack:
            n = self.ir.node(stack.pop())
            source = self.ir.node(n.args[0]) if n.op == Op.READ else None
            if source is None:
                stack.extend(n.args)
            elif source.op in (Op.LET, Op.UPDATE) and self.expander.phase[source.id] == \
                    Phase.CORE and reduced & {s for s in n.arg if isinstance(s, str)}:
                return self.described(source)
        return ""

    def described(self, value: Node) -> str:
        for s in self.ir.states:
            chain = substeps(self.ir, self.ir.update(s.name).id, self.expander.plain_phase) or []
            if value.id in chain[:-1]:
                return f"{value.arg}, the value of {s.name} after iteration " \
                       f"{chain.index(value.id)} of its for block (line {value.loc.line})"
        return f"{value.arg} (line {value.loc.line})"

    # ---- symbols for what the kernel loads
    def operand(self, expr: sympy.Expr, node: Node) -> sympy.Expr:
        if expr.is_Number:
            return expr
        if not expr.free_symbols <= set(self.full) | _bases(expr):
            self.fail(node, "a value of the step depends on an index other than the units "
                      "and heads")
        states = {str(x.base) for x in expr.atoms(sympy.Indexed)} & set(self.form.states)
        if states:  # its update reads no state: the operand would be the state's own value
            self.fail(node, f"reads the new value of {min(states)}, whose update depends on "
                      f"no state: {self.kernel} needs every update to read a state")
        for o in self.form.operands:
            if o.expr == expr:
                return o.symbol
        inputs = {d.name for d in self.ir.inputs}
        symbol = sympy.Symbol(f"o{len(self.form.operands)}", real=True)
        varying = any(str(x.base) in inputs for x in expr.atoms(sympy.Indexed)) or any(
            str(s) in inputs for s in expr.free_symbols)
        self.form.operands.append(Operand(symbol, expr, varying))
        return symbol

    def weight(self, expr: sympy.Expr, state: str) -> sympy.Symbol:
        for w in self.form.weights:
            if w.expr == expr and w.state == state:
                return w.symbol
        symbol = sympy.Symbol(f"r{len(self.form.weights)}", real=True)
        self.form.weights.append(Weight(symbol, expr, state))
        return symbol


def _unfit(name: str) -> str:
    """Why a kernel cannot compute a function in its step and differentiate it ("")."""
    if name not in SCALAR:
        return "has no real scalar form"
    if derivative(name) is None:
        return "has no derivative in the function table"
    if not has_triton(name):
        return "has no Triton spelling"
    return ""


def _bases(expr) -> set:
    """The symbols that are parts of Indexed objects (their bases and labels)."""
    found = set()
    for x in expr.atoms(sympy.Indexed):
        found |= x.base.free_symbols | {x.base.label}
    found |= {s for s in expr.free_symbols if not s.is_integer}  # scalar inputs, params
    return found


