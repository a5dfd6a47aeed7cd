"""The plan: the partition of a cell, the structure of each state, its readouts, the
name of its canonical form and, built on first use (analysis/ir_to_forms.py), the form
objects the backends lower (`form_of(kind)`). The plan names no backend: the verdicts
are the cell's (reclang/compile.py, from backends/base.py).

Forms (DESIGN.md §4):
    diag         h' = a ⊙ h + b, elementwise (any shape)          minGRU, HGRN, Mamba S6
    diag-lti     the same with `a` constant in time                S4D, LRU
    mat-decay    S' = diag(α) S diag(β) + Σ_r k_r v_rᵀ, readout qᵀS GLA, RetNet, mLSTM
    dplr         S' = (diag(α) + Σ_r a_r b_rᵀ) S + Σ k vᵀ          DeltaNet, RWKV-7
    dense        h' = A h + b with A mixing an axis                LMU's memory
    coupled      a joint affine system of several states           Titans
    associative  a monoid other than affine (running max + rescaled sums)   Aaren
    nonlinear    anything else                                     LSTM, GRU, sLSTM
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field

import sympy

from ..errors import at
from ..ir import IR, IndexExpr, Op
from . import ir_to_forms
from .partition import Phase, phases
from .structure import StateStructure, analyze_state, key_axes, matrix_form
from .terms import Expander, NotAffine


@dataclass(frozen=True)
class Readout:
    name: str
    kind: str                    # linear | pointwise | general | state-free
    reads: tuple[str, ...]       # "S (new)", "S (previous)"
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    cell: str
    form: str
    summary: str                           # one line: form with its key facts
    states: tuple[StateStructure, ...]
    readouts: tuple[Readout, ...]
    partition: dict                        # statement name -> prelude | core | epilogue | const
    ir: IR = field(repr=False, compare=False)
    _memo: dict = field(default_factory=dict, repr=False, compare=False)  # kind -> form

    def signature(self) -> tuple:
        """The structural facts of the plan, free of spelling: equal for two ways of
        writing the same cell."""
        states = []
        for s in self.states:
            if not s.affine:
                states.append((s.name, "not affine", s.jacobian, s.monoid))
                continue
            t, b = s.transition, s.input_term
            states.append((s.name, t.kind, t.decay_axes, t.mix_axes, t.rank, t.time_invariant,
                           b.kind, b.rank, b.key_axes, b.value_axes, b.shared_axes,
                           s.coupled_with))
        readouts = tuple((r.name, r.kind, r.reads) for r in self.readouts)
        return (self.form, tuple(states), readouts)

    @property
    def file(self) -> str:
        """The spec's file name, as refusals cite it."""
        return self.ir.source.filename.rsplit("/", 1)[-1]

    def structure(self, name: str) -> StateStructure:
        """The structure of the state of that name."""
        return next(s for s in self.states if s.name == name)

    def at(self, s: StateStructure) -> str:
        """file:line:col of a state's update."""
        return f"{self.file}:{s.loc}"

    def why_not(self) -> str:
        """The state and term that make the cell what it is, with its location."""
        return _why_not(self)

    def form_of(self, kind: str):
        """The cell's form of that kind (analysis/forms.py: Diag, Dense, GatedDiag,
        MatState, Lanes) or an Unfit saying why not; built once, on first use."""
        if kind not in self._memo:
            self._memo[kind] = ir_to_forms.build(self, kind)
        return self._memo[kind]

    @property
    def forms(self) -> dict:
        """Every form of the cell by kind (each built now if it was not yet)."""
        return {kind: self.form_of(kind) for kind in ir_to_forms.BUILDERS}

    def unproven_decays(self) -> str:
        """The decays of the chunkwise operands that the plan does not prove positive
        (the matrix forms take their log), as a condition to check at run time ("" when
        all are proven)."""
        unproven = [self.structure(s.name) for s in getattr(self.form_of("matrix"), "states", ())
                    if not s.positive]
        return "; ".join(f"the decay of {s.name} ({s.transition.decay}, {self.at(s)}) is "
                         "positive at run time (not proven: its log is taken)" for s in unproven)

    def describe(self) -> str:
        lines = [f"cell {self.cell}: {self.summary}", "", "partition:"]
        for phase in ("const", "prelude", "core", "epilogue"):
            names = [n for n, p in self.partition.items() if p == phase]
            if names:
                lines.append(f"  {phase:<9}{', '.join(names)}")
        lines += ["", "recurrence:"]
        for s in self.states:
            lines.append(f"  {matrix_form(s)}")
            if s.affine:
                lines.append(f"    elementwise: {s.recurrence}")
            lines.append(f"    {_state_line(s)}")
        lines += ["", "readouts:"]
        lines += [f"  {r.name}: {r.kind}, reads {', '.join(r.reads) or 'no state'}"
                  for r in self.readouts]
        return "\n".join(lines)

    def to_json(self, **extra) -> str:
        return json.dumps({
            "cell": self.cell, "form": self.form, "summary": self.summary,
            "partition": self.partition,
            "states": [_state_json(s) for s in self.states],
            "readouts": [r.__dict__ for r in self.readouts],
            **extra}, indent=2, default=str)


def make_plan(ir: IR) -> Plan:
    expander, display = Expander(ir), Expander(ir, inline=False)
    states = tuple(_located(ir, i, analyze_state, ir, expander, i, display) for i in ir.stmts
                   if ir.node(i).op == Op.UPDATE)
    readouts = tuple(_located(ir, i, _readout, ir, expander, i) for i in ir.stmts
                     if ir.node(i).op == Op.OUT)
    form, summary = _form(ir, states, readouts)
    return Plan(ir.name, form, summary, states, readouts, _partition(ir), ir)


def _located(ir: IR, i: int, analyze, *args):
    """`analyze(*args)`, an unexpected failure reported at statement i's spec line."""
    with at(ir.node(i), "analysis"):
        return analyze(*args)


# ---- the form -------------------------------------------------------------------------
def _form(ir, states, readouts) -> tuple[str, str]:
    nonaffine = [s for s in states if not s.affine]
    if nonaffine:
        extremes = [s for s in nonaffine if s.monoid]
        if extremes and _log_sum_exp_monoid(ir, states):
            names = ", ".join(s.name for s in extremes)
            return "associative", (f"associative: running {extremes[0].monoid} {names}, the "
                                   "other states rescaled to it (a log-sum-exp monoid)")
        jac = "; ".join(f"{s.name}: {s.jacobian}" for s in nonaffine)
        return "nonlinear", f"nonlinear (Jacobian {jac})"
    if any(s.coupled_with for s in states):
        pairs = ", ".join(f"{s.name} <- {', '.join(s.coupled_with)}"
                          for s in states if s.coupled_with)
        return "coupled", f"coupled affine system ({pairs})"
    kinds = {s.transition.kind for s in states}
    if "dense" in kinds:
        axes = sorted({a for s in states for a in s.transition.mix_axes})
        return "dense", f"dense transition mixing axes {', '.join(axes)}"
    if "dplr" in kinds:
        rank = max(s.transition.rank for s in states)
        decays = {_mat_decay_word(s, set(s.transition.mix_axes)) for s in states
                  if s.transition.kind == "dplr"}
        return "dplr", f"dplr, rank {rank} (diagonal part: {', '.join(sorted(decays))})"
    keys = {s.name: key_axes(ir, s) for s in states}
    matrix = [s for s in states if _is_mat_decay(s, keys[s.name])]
    if matrix:
        decay = ", ".join(f"{s.name}: {_mat_decay_word(s, keys[s.name])}" for s in matrix)
        return "mat-decay", f"mat-decay ({decay})"
    if all(s.transition.time_invariant for s in states):
        return "diag-lti", "diag-lti: elementwise, decay constant in time"
    return "diag", "diag: elementwise " + ", ".join(
        f"{s.name}: {_decay_word(s.transition)}" for s in states)


def _decay_word(t) -> str:
    if t.decay == 1:
        return "no decay"
    where = f"along {', '.join(t.decay_axes)}" if t.decay_axes else "scalar"
    lti = ", constant in time" if t.time_invariant else ""
    return f"decay {where}{lti}"


def _mat_decay_word(s: StateStructure, keys: set) -> str:
    t = s.transition
    axes = set(t.decay_axes)
    lti = ", constant in time" if t.time_invariant and t.decay != 1 else ""
    if t.decay == 1:
        return "no decay"
    if not axes & keys:
        return f"scalar decay{' per ' + ', '.join(sorted(axes)) if axes else ''}{lti}"
    return f"key-wise decay along {', '.join(sorted(axes & keys))}{lti}"


def _is_mat_decay(s: StateStructure, keys: set) -> bool:
    """A state fed by an outer product, read by contracting its key axes (qᵀS), whose
    decay either does not vary along the key axes or varies only along them (and the
    axes both sides share, like heads)."""
    b, t = s.input_term, s.transition
    if b.kind != "outer" or not keys:
        return False
    if not (keys <= set(b.key_axes) or keys <= set(b.value_axes)):
        return False
    decay = set(t.decay_axes)
    return not decay & keys or decay <= keys | set(b.shared_axes)


def _log_sum_exp_monoid(ir: IR, states) -> bool:
    """A running max m (or min) and states rescaled to it, X' = X·exp(m - m') + w:
    with m frozen, each other state must be affine with exactly that decay. Such a cell
    is an associative scan with (m1, X1) ⊕ (m2, X2) = (M, X1·e^(m1-M) + X2·e^(m2-M)),
    M = max(m1, m2); the operator's associativity is checked numerically."""
    extremes = frozenset(s.name for s in states if s.monoid)
    others = [s for s in states if not s.monoid]
    if not extremes or not others:
        return False
    expander = Expander(ir, extremes)
    for s in others:
        frozen = analyze_state(ir, expander, ir.update(s.name).id)
        if not frozen.affine or frozen.coupled_with or not _is_rescaling(
                frozen.transition.decay, extremes):
            return False
    return _associative(_rescaled_combine)


def _is_rescaling(decay, extremes) -> bool:
    """decay == exp(m_prev[i] - m_new[i]) for a running extreme m."""
    decay = sympy.powsimp(decay)
    if not isinstance(decay, sympy.exp):
        return False
    exponent = sympy.expand(decay.args[0])
    atoms = exponent.atoms(sympy.Indexed) or exponent.atoms(sympy.Symbol)

    def named(m, suffix):
        return [x for x in atoms if str(getattr(x, "base", x)) == f"{m}_{suffix}"]

    for m in extremes:
        prev, new = named(m, "prev"), named(m, "new")
        if len(prev) == 1 and len(new) == 1 and sympy.expand(exponent - prev[0] + new[0]) == 0:
            return True
    return False


def _rescaled_combine(a, b):
    (m1, x1), (m2, x2) = a, b
    top = max(m1, m2)
    return top, x1 * math.exp(m1 - top) + x2 * math.exp(m2 - top)


def _associative(combine, trials: int = 200, seed: int = 0) -> bool:
    """(a ⊕ b) ⊕ c == a ⊕ (b ⊕ c) on random elements."""
    rng = random.Random(seed)
    for _ in range(trials):
        a, b, c = ((rng.uniform(-5, 5), rng.uniform(-3, 3)) for _ in range(3))
        left, right = combine(combine(a, b), c), combine(a, combine(b, c))
        if any(abs(x - y) > 1e-9 * (1 + abs(x)) for x, y in zip(left, right)):
            return False
    return True


# ---- readouts -------------------------------------------------------------------------
def _readout(ir: IR, expander: Expander, i: int) -> Readout:
    import sympy

    node = ir.node(i)
    env = {a: sympy.Symbol(a, integer=True) for a in node.axes}
    reads = tuple(sorted(_reads(ir, i)))
    if not reads:
        return Readout(node.arg, "state-free", reads)
    try:
        expander.terms(node.args[0], env)
        return Readout(node.arg, "linear", reads)
    except NotAffine as err:
        if _pointwise_of_linear(ir, expander, node.args[0], env):
            return Readout(node.arg, "pointwise", reads, f"{err.reason} of linear readouts")
        return Readout(node.arg, "general", reads, err.reason)


def _pointwise_of_linear(ir, expander, i, env) -> bool:
    """True when every maximal linear part of the value is linear in the states and
    the rest applies elementwise functions to them (mLSTM's q·S / max(|q·n|, 1))."""
    try:
        expander.terms(i, env)
        return True
    except NotAffine:
        node = ir.node(i)
        if node.op == Op.FN:
            return all(_pointwise_of_linear(ir, expander, a, env) for a in node.args)
        if node.op == Op.READ and ir.node(node.args[0]).op in (Op.LET, Op.UPDATE) and \
                not any(isinstance(s, IndexExpr) for s in node.arg):  # a gather: general
            source = ir.node(node.args[0])
            inner = {a: env.get(s, s) if isinstance(s, str) else s
                     for a, s in zip(source.axes, node.arg)}
            return _pointwise_of_linear(ir, expander, source.args[0], inner)
        return False


def _reads(ir: IR, root: int) -> set[str]:
    found, stack, seen = set(), [root], set()
    while stack:
        n = ir.node(stack.pop())
        for a in n.args:
            src = ir.node(a)
            if src.op == Op.STATE:
                found.add(f"{src.arg} (previous)")
            elif src.op == Op.UPDATE:
                found.add(f"{src.arg} (new)")
            elif a not in seen:
                seen.add(a)
                stack.append(a)
    return found


# ---- partition and verdicts -----------------------------------------------------------
def _partition(ir: IR) -> dict:
    """const / prelude / core / epilogue for every statement. The epilogue is what
    depends on the states but feeds no state update (the readouts)."""
    phase = phases(ir)
    feeds_update = set()
    for i in ir.stmts:
        if ir.node(i).op == Op.UPDATE:
            feeds_update |= _ancestors(ir, i) | {i}
    result = {}
    for i in ir.stmts:
        n = ir.node(i)
        p = phase[i]
        name = p.name.lower()
        if p == Phase.CORE and i not in feeds_update:
            name = "epilogue"
        result[n.arg if n.op != Op.UPDATE else f"{n.arg}'"] = name
    return result


def _ancestors(ir, i):
    import networkx as nx
    return nx.ancestors(ir.graph, i)


def _why_not(plan: Plan) -> str:
    """The state and term that make the cell what it is, with its location."""
    file, form, states = plan.file, plan.form, plan.states
    culprit = next((s for s in states if not s.affine), None)
    if culprit is not None:
        return f"{file}:{culprit.loc}: {culprit.reason}"
    for s in states:
        t, b = s.transition, s.input_term
        if s.coupled_with:
            return f"{file}:{s.loc}: the update of {s.name} reads {', '.join(s.coupled_with)}"
        if t.kind in ("dense", "dplr"):
            what = "a low-rank part" if t.kind == "dplr" else "a dense part"
            return f"{file}:{s.loc}: the transition of {s.name} has {what} mixing " \
                   f"{', '.join(t.mix_axes)}"
        if form == "mat-decay" and b.kind == "outer":
            return f"{file}:{s.loc}: {s.name} is a matrix state fed by an outer product"
        if form in ("diag", "diag-lti") and b.kind == "outer":
            return (f"{file}:{s.loc}: the decay of {s.name} varies along both sides of its "
                    f"outer-product input ({', '.join(t.decay_axes)}): not a matrix decay")
        if form in ("diag", "diag-lti"):
            return f"{file}:{s.loc}: {s.name} is updated elementwise (input: {b.kind})"
    if not states:
        return f"{file}:{plan.ir.node(plan.ir.stmts[0]).loc}: the cell has no state ({form})"
    return f"{plan.at(states[0])}: the recurrence is {form}"


def _state_line(s: StateStructure) -> str:
    if not s.affine:
        extra = f", running {s.monoid}" if s.monoid else ""
        return f"not affine ({s.reason}); Jacobian: {s.jacobian}{extra}"
    t, b = s.transition, s.input_term
    parts = [f"transition: {t.kind}"]
    if t.kind in ("scalar", "diagonal", "dplr", "dense") and t.decay != 1:
        parts.append("decay " + (f"along {', '.join(t.decay_axes)}" if t.decay_axes
                                 else "scalar"))
    if t.kind == "dplr":
        parts.append(f"rank {t.rank} along {', '.join(t.mix_axes)}")
    if t.kind == "dense":
        parts.append(f"mixing {', '.join(t.mix_axes)}")
    parts.append("constant in time" if t.time_invariant else "time-varying")
    if t.positive and t.decay != 1:
        parts.append("decay > 0 (log-space safe)" + (" and <= 1" if t.at_most_one else ""))
    if t.kind == "dplr":
        parts.append("the low-rank part's sign is not fixed (eigenvalues may be negative)")
    if b.kind == "outer":
        parts.append(f"input: outer product rank {b.rank} "
                     f"[{', '.join(b.key_axes)}] x [{', '.join(b.value_axes)}]"
                     + (f" per {', '.join(b.shared_axes)}" if b.shared_axes else ""))
    else:
        parts.append(f"input: {b.kind}")
    if s.coupled_with:
        parts.append(f"coupled with {', '.join(s.coupled_with)}")
    return "; ".join(parts)


def _state_json(s: StateStructure) -> dict:
    out = {"name": s.name, "affine": s.affine, "recurrence": s.recurrence}
    if s.affine:
        t, b = s.transition, s.input_term
        out["transition"] = {"kind": t.kind, "decay": str(t.decay), "decay_axes": t.decay_axes,
                             "mix_axes": t.mix_axes, "rank": t.rank,
                             "time_invariant": t.time_invariant, "positive": t.positive}
        out["input"] = {"kind": b.kind, "rank": b.rank, "key_axes": b.key_axes,
                        "value_axes": b.value_axes, "shared_axes": b.shared_axes}
        out["coupled_with"] = s.coupled_with
    else:
        out.update(reason=s.reason, loc=str(s.loc), jacobian=s.jacobian, monoid=s.monoid)
    return out
