"""The canonical forms of a cell (analysis/forms.py), from its IR and its plan.

`BUILDERS[kind](plan)` builds one form or an `Unfit`; `Plan.form_of(kind)` calls it at
most once per cell and keeps the result, so a backend's verdict and its lowering read
the same object. The plan is passed in (not imported: plan.py imports this module).
"""

from __future__ import annotations

import re

import sympy

from .forms import Dense, Diag, DiagState, GatedDiag, Lanes, Unfit
from .lanes import LaneForm, Operand, Unsupported, lane_form, states_as_outputs
from .operands import Unsupported as NoOperands
from .operands import chunk_operands

_AT = re.compile(r"[^:\s(]+:\d+:\d+")


def unfit(reason: str) -> Unfit:
    """An Unfit whose `loc` is the first `file:line:col` its reason cites."""
    found = _AT.search(reason)
    return Unfit(reason, found.group(0) if found else "")


# ---- diag and dense: the affine normal form of every state -----------------------------
def diag(plan) -> Diag | Dense | Unfit:
    """h' = a ⊙ h + b for every state (Dense where a transition mixes some axes)."""
    if plan.form not in ("diag", "diag-lti", "dense"):
        return unfit(plan.why_not())
    states = tuple(_diag_state(s) for s in plan.states)
    if any(s.mix_axes for s in states):
        return Dense(states)
    names = {d.name for d in plan.ir.states}
    # a state's new value as an input (its update reads no state) is named by the normal
    # form as the state itself: then a and b cannot be printed, the step on all tokens
    # computes them
    printable = not any(_reads(x) & names for s in states for x in (s.a, s.b))
    return Diag(states, printable)


def _diag_state(s) -> DiagState:
    """a: the sum of the state's coefficients in its normal form where each reads the
    state at its own indices (the transition's decay is expanded: exp(x + y) =
    exp(x) exp(y), a product where the spec says a sum), else the decay."""
    t = s.transition
    mix = t.mix_axes if t.kind == "dense" else ()
    dims = tuple(s.axes.index(a) + 1 for a in mix)
    axes = tuple(sympy.Symbol(a, integer=True) for a in s.axes)
    own = [term for term in s.terms if term.state == s.name]
    plain = not mix and all(term.index == axes and not term.sums for term in own)
    a = sympy.Add(*(term.coef for term in own)) if plain else sympy.sympify(t.decay)
    return DiagState(s.name, s.axes, a, s.input_term.expr, bool(t.time_invariant), mix, dims)


def _reads(expr) -> set[str]:
    """The tensors (and scalars) a sympy expression reads, by name."""
    expr = sympy.sympify(expr)
    return {str(x.base) for x in expr.atoms(sympy.Indexed)} | {
        str(x) for x in expr.free_symbols if not x.is_integer}


# ---- the matrix-state (chunkwise) operands ---------------------------------------------
def matrix(plan):
    """The chunkwise operands of a matrix-state cell (analysis/operands.py)."""
    if plan.form not in ("mat-decay", "dplr"):
        return unfit(plan.why_not())
    try:
        return chunk_operands(plan.ir, plan.states)
    except NoOperands as err:
        return unfit(str(err) if _AT.search(str(err)) else f"{_cell_at(plan)}: {err}")


def _cell_at(plan) -> str:
    """file:line:col of the first state's update, else of the first statement."""
    if plan.states:
        return plan.at(plan.states[0])
    return f"{plan.file}:{plan.ir.node(plan.ir.stmts[0]).loc}"


# ---- the lane forms: the fused loop and the gated scan ---------------------------------
def lanes(plan) -> Lanes | Unfit:
    """The lane form of the cell with its gates inside, operands merged."""
    try:
        form = lane_form(plan.ir, gates=True)
    except Unsupported as err:
        return unfit(str(err))
    merge_operands(form, plan.ir)
    return Lanes(form)


def loop_lanes(plan) -> Lanes | Unfit:
    """The lane form for a loop that keeps its states in memory, not registers (the cpu
    backend): any number of units per head."""
    if not plan.ir.states:  # lane_form's refusal would name no line
        return unfit(f"{plan.file}:{plan.ir.node(plan.ir.stmts[0]).loc}: the compiled loop "
                     "runs cells with states; this one has none")
    try:
        form = lane_form(plan.ir, gates=True, lane_limit=None, kernel="the compiled loop")
    except Unsupported as err:
        try:  # the outputs do not fit (a sum over the units): computed after the loop
            form = lane_form(plan.ir, gates=True, lane_limit=None, outputs=False,
                             kernel="the compiled loop")
        except Unsupported:
            return unfit(str(err))
        states_as_outputs(plan.ir, form)
    merge_operands(form, plan.ir)
    return Lanes(form)


def gated(plan) -> GatedDiag | Unfit:
    """The lane form of a one-state diagonal cell's update with its gates inside, and
    a, b of its state (operands o_.. and constants c_.., named from the spec)."""
    ir = plan.ir
    if plan.form not in ("diag", "diag-lti"):  # a, b below assume an affine update
        return unfit(plan.why_not())
    if not ir.states:
        return unfit(f"{plan.file}:{ir.node(ir.stmts[0]).loc}: the gated scan runs cells "
                     "with one state; this one has none")
    if len(ir.states) > 1:
        return unfit(f"{plan.file}:{ir.states[1].loc}: the gated scan runs cells with one "
                     f"state; {ir.states[1].name} is a second")
    try:
        form = lane_form(ir, gates=True, lane_limit=None, outputs=False,
                         kernel="the gated scan")
    except Unsupported as err:
        return unfit(str(err))
    return _gated(plan, form)


def _gated(plan, form: LaneForm) -> GatedDiag | Unfit:
    state = form.states[0]
    at = f"{plan.file}:{plan.ir.update(state).loc}"
    s, f = form.prev[state], form.updates[state]
    a, b = sympy.diff(f, s), f.subs(s, 0)
    if s in a.free_symbols or s in b.free_symbols:  # the plan says affine: a safeguard
        return unfit(f"{at}: the update of {state} is not affine in it")
    varying = [o for o in form.operands if o.time_varying]
    if not varying:
        return unfit(f"{at}: the update of {state} reads no input")
    fixed = [o for o in form.operands if not o.time_varying]
    rename = operand_symbols(varying + fixed, plan.ir)
    form.operands = [Operand(rename[o.symbol], o.expr, o.time_varying)
                     for o in varying + fixed]
    form.updates = {k: v.xreplace(rename) for k, v in form.updates.items()}
    return GatedDiag(form, a.xreplace(rename), b.xreplace(rename))


def merge_operands(form: LaneForm, ir) -> None:
    """Operands that are only ever added together become one (o0 + o1 for W x and b):
    one load per step instead of several. Names the operands from the spec, in order of
    use."""
    by_symbol = {o.symbol for o in form.operands}
    merged: dict = {}
    exprs = {k: _merged(v, by_symbol, merged) for k, v in {**form.updates,
                                                            **form.outputs}.items()}
    defs = {o.symbol: (o.expr, o.time_varying) for o in form.operands}
    for key, symbol in merged.items():
        parts = [defs[k] for k in key]
        defs[symbol] = (sympy.Add(*[p[0] for p in parts]), any(p[1] for p in parts))
    used: list = []
    for e in exprs.values():
        for s in sorted(e.free_symbols, key=sympy.default_sort_key):
            if s in defs and s not in used:
                used.append(s)
    rename = operand_symbols([Operand(s, *defs[s]) for s in used], ir)
    form.operands = [Operand(rename[s], *defs[s]) for s in used]
    form.updates = {k: exprs[k].xreplace(rename) for k in form.updates}
    form.outputs = {k: exprs[k].xreplace(rename) for k in form.outputs}


def _merged(e, operands: set, merged: dict):
    """e with every sum of two or more operands replaced by one symbol (m0, m1, ...)."""
    if not e.args:
        return e
    args = [_merged(a, operands, merged) for a in e.args]
    if isinstance(e, sympy.Add):
        ops = sorted((a for a in args if a in operands), key=str)
        if len(ops) >= 2:
            key = tuple(ops)
            if key not in merged:
                merged[key] = sympy.Symbol(f"m{len(merged)}", real=True)
            return sympy.Add(merged[key], *[a for a in args if a not in ops])
    return e.func(*args)


BUILDERS = {"diag": diag, "matrix": matrix, "lanes": lanes, "gated": gated,
            "loop_lanes": loop_lanes}


def build(plan, kind: str):
    """The form `kind` of the plan's cell, or an Unfit (unmemoized: use plan.form_of)."""
    return BUILDERS[kind](plan)


def operand_symbols(operands, ir) -> dict:
    """Kernel symbols for the operands, named from the spec: `o_` (time-varying) or `c_`
    (params only) and the tensor each mainly reads (inside its outermost sum, a param
    first: o_Wdt for Σ_r Wdt[d, r] (W_r x)[r]; with its fixed indices: o_W1 for
    W[1, n, :] x), made unique with every name a template derives from them (_ptr, _at,
    d_, _sum)."""
    params = {d.name for d in ir.params}
    used, rename = set(), {}
    for o in operands:
        base = ("o_" if o.time_varying else "c_") + _stem(o.expr, params)
        name, k = base, 1
        while _derived(name) & used:
            k += 1
            name = f"{base}_{k}"
        used |= _derived(name)
        rename[o.symbol] = sympy.Symbol(name, real=True)
    return rename


def _derived(name: str) -> set[str]:
    return {name, f"{name}_ptr", f"{name}_at", f"d_{name}", f"d_{name}_ptr", f"d_{name}_sum"}


def _stem(expr, params: set) -> str:
    sums = [x for x in sympy.preorder_traversal(expr) if isinstance(x, sympy.Sum)]
    reads = [x for x in sympy.preorder_traversal(sums[0].function if sums else expr)
             if isinstance(x, sympy.Indexed) or (isinstance(x, sympy.Symbol)
                                                 and not x.is_integer)]
    reads.sort(key=lambda x: str(getattr(x, "base", x)) not in params)  # stable
    if not reads:
        return "value"
    x = reads[0]
    if isinstance(x, sympy.Symbol):
        return str(x)
    return str(x.base) + "".join(str(int(i)) for i in x.indices if i.is_Integer)
