"""The structure of each state's update, proved from its affine normal form.

For a state S with update S' = Σ terms (see terms.py), the terms fall in three groups:
    self terms    c · S[same indices]            the diagonal part of the transition
                  c · Σ_l S[.., l, ..]           mixing along an axis (low rank or dense)
    cross terms   c · P[...]                     another state: a coupled system
    free terms    b                              the input term B
and the transition A is classified as identity, scalar, diagonal (along which axes),
diagonal plus rank r (the vectors a_r, b_r and the axis they act on), or dense. The
input term is classified as an outer product of rank r (which axes are the "key" side,
which the "value" side, which are shared like heads), elementwise, or general.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import sympy

from ..ir import DEFINITIONS, IR, Op
from .substeps import Composer, Definition, substeps
from .terms import Expander, NotAffine, Term, _collapse


@dataclass(frozen=True)
class Transition:
    kind: str                          # identity | scalar | diagonal | dplr | dense | none
    decay: sympy.Expr                  # the diagonal coefficient
    decay_axes: tuple[str, ...] = ()   # state axes the diagonal coefficient varies along
    mix_axes: tuple[str, ...] = ()     # axes mixed by the low-rank or dense part
    low_rank: tuple[tuple[sympy.Expr, sympy.Expr], ...] = ()  # (a_r, b_r) on the mix axis
    time_invariant: bool = False
    positive: bool | None = None       # the diagonal coefficient is provably > 0
    at_most_one: bool | None = None    # ... and provably <= 1

    @property
    def rank(self) -> int:
        return len(self.low_rank)


@dataclass(frozen=True)
class InputTerm:
    kind: str                          # none | outer | elementwise | general
    expr: sympy.Expr
    rank: int = 0
    key_axes: tuple[str, ...] = ()     # the outer product's two sides ...
    value_axes: tuple[str, ...] = ()
    shared_axes: tuple[str, ...] = ()  # ... and the axes both sides carry (heads)
    pairs: tuple[tuple[sympy.Expr, sympy.Expr], ...] = ()  # (key side, value side) per term


@dataclass(frozen=True)
class StateStructure:
    name: str
    axes: tuple[str, ...]
    affine: bool
    transition: Transition | None = None
    input_term: InputTerm | None = None
    coupled_with: tuple[str, ...] = ()  # other states its update reads
    reason: str = ""                    # why not affine
    loc: object = None                  # where that shows
    jacobian: str = ""                  # for non-affine updates: diagonal | block-diagonal | dense
    monoid: str = ""                    # max / min when the update is a running max or min
    recurrence: str = ""                # the update in mathematical form, elementwise
    matrix: str = ""                    # ... and as S' = A S + B
    terms: tuple[Term, ...] = field(default=(), repr=False)
    defs: tuple[Definition, ...] = field(default=(), repr=False)  # vectors the terms read


def analyze_state(ir: IR, expander: Expander, update: int,
                  display: Expander | None = None) -> StateStructure:
    """The structure of one state's update. With a `display` expander (one that keeps
    intermediates by name), the printed forms use the spec's own names."""
    s = _analyze(ir, expander, update)
    if display is not None and s.affine:
        shown = _analyze(ir, display, update)
        s = replace(s, recurrence=shown.recurrence, matrix=matrix_form(shown))
    return s


def _analyze(ir: IR, expander: Expander, update: int) -> StateStructure:
    node = ir.node(update)
    symbols = tuple(sympy.Symbol(a, integer=True) for a in node.axes)
    env = dict(zip(node.axes, symbols))
    name = node.arg
    chain = substeps(ir, update, expander.plain_phase)
    composed = Composer(ir, expander, update, _transition).compose(chain) if chain else None
    try:
        terms, defs = composed or (expander.terms(node.args[0], env), ())
    except NotAffine as err:
        monoid = _running_extreme(ir, node)
        read = ", ".join(sorted({r[0] for r in _state_reads(ir, err.node.id)})) or name
        reason = f"{read} is {err.reason}: the update of {name} is not affine in {read}"
        return StateStructure(name, node.axes, False, reason=reason, loc=err.node.loc,
                              jacobian=_jacobian(ir, update), monoid=monoid,
                              recurrence=_pretty_nonaffine(ir, name, node))
    own = [t for t in terms if t.state == name]
    cross = sorted({t.state for t in terms if t.state not in (None, name)})
    free = [t for t in terms if t.state is None]
    transition = _transition(own, symbols, node.axes, expander, node.sizes)
    input_term = _input_term(free, symbols, node.axes)
    return StateStructure(name, node.axes, True, transition, input_term, tuple(cross),
                          loc=node.loc, recurrence=_pretty(name, symbols, terms),
                          terms=tuple(terms), defs=defs)


# ---- the transition -------------------------------------------------------------------
def _transition(own: list[Term], symbols, axes, expander, sizes) -> Transition:
    diagonal, mixing, dense = sympy.Integer(0), [], set()
    for t in own:
        for kind, value in _own_pieces(t, symbols):
            if kind == "diagonal":
                diagonal += value
            elif kind == "mixing":
                mixing.append(value)
            else:
                dense.update(axes[p] for p in value)
    if not own:
        return Transition("none", sympy.Integer(0))
    decay = diagonal
    decay_axes = tuple(a for a, s in zip(axes, symbols) if s in decay.free_symbols)
    varying = _time_varying(expander, [decay] + [x for _, p in mixing for x in p])
    positive, at_most_one = _bounds(decay, dict(zip(symbols, sizes)))
    info = dict(decay=decay, decay_axes=decay_axes, time_invariant=not varying,
                positive=positive, at_most_one=at_most_one)
    mix_axes = {axes[p] for p, _ in mixing}
    if dense or len(mix_axes) > 1:
        return Transition("dense", mix_axes=tuple(sorted(dense | mix_axes)), **info)
    if mixing:
        return Transition("dplr", mix_axes=tuple(mix_axes), low_rank=_group_rank(mixing),
                          **info)
    kind = "identity" if decay == 1 else "scalar" if not decay_axes else "diagonal"
    return Transition(kind, **info)


def _own_pieces(t: Term, symbols) -> list[tuple[str, object]]:
    """A self term as (diagonal, coefficient), (mixing, (position, (a, b))) and (dense,
    positions) pieces. A mixing term is factored whole first: a function of the keys
    (sigmoid(k_i) + k_i) stays one factor of rank one, where its expansion would read as
    several terms, one per distinct piece of b."""
    whole = _classify(_contract_deltas(t), symbols)
    if whole[0] == "mixing":
        return [whole]
    return [_classify(_contract_deltas(Term(c, t.state, t.index, t.sums)), symbols)
            for c in sympy.Add.make_args(_expand_numerators(t.coef))]


def _classify(t: Term, symbols) -> tuple[str, object]:
    moved = [p for p, (s, L) in enumerate(zip(t.index, symbols)) if s != L]
    if not moved:
        return "diagonal", _collapse([Term(t.coef, None, (), t.sums)])
    if len(moved) == 1 and t.index[moved[0]] in {s for s, _ in t.sums}:
        pair = _factor_rank_one(t, moved[0], symbols)
        if pair is not None:
            return "mixing", (moved[0], pair)
    return "dense", moved


def _expand_numerators(expr) -> sympy.Expr:
    """sympy.expand that keeps each denominator a factor of its own. sympy's expand
    multiplies denominators out: sigmoid(k_i) sigmoid(k_l) = 1/((1 + e^-k_i)(1 + e^-k_l))
    becomes 1/(1 + e^-k_i + e^-k_l + e^-k_i e^-k_l), which no longer splits into a(i) b(l)
    and turned a delta rule of sigmoid or silu keys dense. Each reciprocal stands in as an
    atom while the numerator is expanded."""
    expr = sympy.sympify(expr)
    reciprocals = {p: sympy.Dummy() for p in expr.atoms(sympy.Pow) if p.exp.is_negative}
    return sympy.expand(expr.xreplace(reciprocals)).xreplace(
        {d: p for p, d in reciprocals.items()})


def _contract_deltas(t: Term) -> Term:
    """Σ_l δ(i, l) · c · S[.., l, ..] = c · S[.., i, ..]: an identity written as
    where(i == l, 1, 0) is recognized as such. A term without one is left as written."""
    if not sympy.sympify(t.coef).atoms(sympy.KroneckerDelta):
        return t
    coef, index, sums = _expand_numerators(t.coef), t.index, dict(t.sums)
    for delta in coef.atoms(sympy.KroneckerDelta):
        a, b = delta.args
        summed = b if b in sums else a if a in sums else None
        if summed is None or not all(delta in sympy.Mul.make_args(term)
                                     for term in sympy.Add.make_args(coef)):
            continue
        keep = a if summed is b else b
        coef = coef.subs(delta, 1).subs(summed, keep)
        index = tuple(keep if x == summed else x for x in index)
        del sums[summed]
    return Term(coef, t.state, index, tuple(sums.items()))


def _factor_rank_one(t: Term, p: int, symbols):
    """Splits c(i, l) into a(i) · b(l) for a term c · Σ_l S[.., l, ..], or None."""
    i, j = symbols[p], t.index[p]  # Σ_j c(i, j) S[.., j, ..]
    extra = {s: n for s, n in t.sums if s != j}
    a, b, rest = [], [], []
    for f in sympy.Mul.make_args(t.coef):
        free = f.free_symbols
        if i in free and j in free:
            return None
        (a if i in free else b if j in free else rest).append(f)
    groups = [a, b, rest]
    # a sum over another index must stay within one side (k1·k0 in a DeltaProduct)
    for s in extra:
        sides = [g for g in groups if any(s in f.free_symbols for f in g)]
        if len(sides) > 1:
            return None
    wrap = [_sum_over(sympy.Mul(*g), extra) for g in groups]
    common = sympy.Symbol("l", integer=True)
    return (wrap[0] * wrap[2], wrap[1].subs(j, common))


def _sum_over(expr, sums: dict):
    limits = [(s, 0, n - 1) for s, n in sums.items() if s in expr.free_symbols]
    return sympy.Sum(expr, *limits) if limits else expr


def _group_rank(mixing) -> tuple:
    """Terms with the same right vector b add up: the rank is the number of distinct b."""
    groups: list[list] = []
    for _, (a, b) in mixing:
        for g in groups:
            if _equal(g[1], b):
                g[0] += a
                break
        else:
            groups.append([a, b])
    return tuple((a, b) for a, b in groups)


def _equal(x, y) -> bool:
    """x == y as values: a polynomial difference (in the indexed inputs) is zero exactly
    when it expands to zero, so only the others take sympy's slow simplify."""
    d = sympy.expand(x - y)
    if d == 0:
        return True
    if d.is_polynomial(*d.atoms(sympy.Indexed, sympy.Symbol)):
        return False
    return sympy.simplify(d) == 0


def _time_varying(expander: Expander, exprs) -> bool:
    names = set()
    for e in exprs:
        for x in e.atoms(sympy.Indexed, sympy.Symbol):
            names.add(str(x.base) if isinstance(x, sympy.Indexed) else str(x))
    return bool(names & expander.time_varying)


INDEX_VALUES_LIMIT = 4096  # a decay of indices alone is evaluated at up to this many


def _bounds(decay, sizes: dict) -> tuple[bool | None, bool | None]:
    """Whether the decay is provably > 0, and <= 1: from sympy's assumptions, else, for
    a decay of the state's indices alone (RetNet's 1 - 2^(-5-h): sympy does not bound
    2^h), from its value at every index, which the sizes make a finite set."""
    positive, at_most_one = _positive(decay), _at_most_one(decay)
    free = sorted(sympy.sympify(decay).free_symbols, key=str)
    if None not in (positive, at_most_one) or not set(free) <= set(sizes) or \
            math.prod(sizes[x] for x in free) > INDEX_VALUES_LIMIT:
        return positive, at_most_one
    values = [complex(decay.subs(dict(zip(free, at))))
              for at in itertools.product(*(range(sizes[x]) for x in free))]
    if any(v.imag for v in values):
        return positive, at_most_one
    return all(v.real > 0 for v in values), all(v.real <= 1 for v in values)


def _positive(expr) -> bool | None:
    try:
        return bool(expr.is_positive) if expr.is_positive is not None else None
    except TypeError:
        return None


def _at_most_one(expr) -> bool | None:
    result = (expr - 1).is_nonpositive
    return None if result is None else bool(result)


# ---- the input term -------------------------------------------------------------------
def _input_term(free: list[Term], symbols, axes) -> InputTerm:
    if not free:
        return InputTerm("none", sympy.Integer(0))
    expr = _collapse(free)
    if len(axes) < 2:
        return InputTerm("elementwise", expr, rank=len(free))
    split = _outer_split([_factor_axes(t, symbols, axes) for t in free], axes)
    if split is None:
        return InputTerm("general", expr)
    key, value, shared = split
    pairs = tuple(_split_term(t, symbols, axes, set(value)) for t in free)
    return InputTerm("outer", expr, len(free), key, value, shared, pairs)


def _split_term(t: Term, symbols, axes, value_axes) -> tuple:
    """A term of an outer product as (key side, value side)."""
    names = dict(zip(symbols, axes))
    key, value = [], []
    for f in sympy.Mul.make_args(_collapse([Term(t.coef, None, (), t.sums)])):
        on_value = any(names.get(x) in value_axes for x in f.free_symbols)
        (value if on_value else key).append(f)
    return sympy.Mul(*key), sympy.Mul(*value)


def _factor_axes(t: Term, symbols, axes) -> list[set[str]]:
    """For each factor of a term, the state axes it varies along."""
    names = dict(zip(symbols, axes))
    return [{names[s] for s in f.free_symbols if s in names}
            for f in sympy.Mul.make_args(_collapse([Term(t.coef, None, (), t.sums)]))]


def _outer_split(terms: list[list[set[str]]], axes):
    """The assignment of state axes to (key, value, shared) with the fewest shared axes
    under which every factor lies on one side: B = Σ_r a_r[key, shared] b_r[value, shared]."""
    best = None
    for labels in itertools.product("kvs", repeat=len(axes)):
        side = dict(zip(axes, labels))
        if "k" not in labels or "v" not in labels:
            continue
        ok = all(len({side[a] for a in f} - {"s"}) <= 1 for factors in terms for f in factors)
        ok = ok and all(_covers(factors, side) for factors in terms)
        if ok and (best is None or labels.count("s") < best.count("s")):
            best = labels
    if best is None:
        return None
    pick = lambda c: tuple(a for a, lab in zip(axes, best) if lab == c)  # noqa: E731
    return pick("k"), pick("v"), pick("s")


def _covers(factors, side) -> bool:
    """A term must reach both sides (else it is not an outer product but a broadcast)."""
    sides = {side[a] for f in factors for a in f} - {"s"}
    return sides == {"k", "v"}


# ---- non-affine updates -----------------------------------------------------------------
def _jacobian(ir: IR, update: int) -> str:
    """How the new state depends on the previous states: diagonal when every state read
    takes the update's own index at each axis, block-diagonal when reads mix within some
    axes only, dense otherwise."""
    node = ir.node(update)
    reads = _state_reads(ir, update)
    if not reads:
        return "none"
    mixed = {k for _, positions in reads for k, at in enumerate(positions) if at != k}
    others = sorted({r[0] for r in reads} - {node.arg})
    also = f" (element-wise in {', '.join(others)} too)" if others else ""
    if not mixed:
        return "diagonal" + also
    shape = ir.decls[node.arg].shape
    if len(shape) > 1 and len(mixed) < len(shape) and len(node.axes) == len(shape):
        blocks = [a for k, a in enumerate(node.axes) if k not in mixed]
        mixing = [a for k, a in enumerate(node.axes) if k in mixed]
        return f"block-diagonal (blocks along {', '.join(blocks)}, mixing {', '.join(mixing)})"
    return "dense"


def _state_reads(ir: IR, root: int):
    """(state, positions) for every read of a previous state that root's value depends
    on: positions[k] is the axis of root the k-th subscript is (names mapped along the
    path through intermediates), or None: a constant, a computed subscript, an index a
    reduction on the way sums over (softmax(n: h[n]) reads every h[n] for each n)."""
    own = {a: k for k, a in enumerate(ir.node(root).axes)}
    found, stack, seen = [], [(root, own)], set()
    while stack:
        i, env = stack.pop()
        for a in ir.node(i).args:
            n = ir.node(a)
            inner = _scope(ir, n, env)
            key = (a, tuple(sorted(inner.items())))
            if key in seen:
                continue
            seen.add(key)
            if n.op == Op.READ and ir.node(n.args[0]).op == Op.STATE:
                found.append((ir.node(n.args[0]).arg, tuple(_at(env, sub) for sub in n.arg)))
                continue
            stack.append((a, inner))
    return found


def _scope(ir: IR, n, env: dict) -> dict:
    """The names under node n, mapped to root's axes: a read of an intermediate enters
    its statement (its k-th axis: the k-th subscript); a reduction hides its indices."""
    if n.op == Op.READ and ir.node(n.args[0]).op in DEFINITIONS:
        return {a: _at(env, sub) for a, sub in zip(ir.node(n.args[0]).axes, n.arg)}
    if n.op == Op.REDUCE:
        return env | dict.fromkeys(n.arg[1], None)
    return env


def _at(env: dict, sub):
    """The root axis a subscript is (None: not one of them)."""
    return env.get(sub) if isinstance(sub, str) else None


def _running_extreme(ir: IR, node) -> str:
    """"max" when the update is max(S[same indices], a state-free value) (or min)."""
    value = ir.node(node.args[0])
    if value.op != Op.FN or value.arg not in ("max", "min"):
        return ""
    own = [a for a in value.args if _is_own_read(ir, ir.node(a), node)]
    others = [a for a in value.args if a not in own]
    if len(own) == 1 and len(others) == 1 and not _state_reads(ir, others[0]) and \
            not _is_state_read(ir, ir.node(others[0])):
        return value.arg
    return ""


def _is_state_read(ir: IR, n) -> bool:
    return n.op == Op.READ and ir.node(n.args[0]).op == Op.STATE


def _is_own_read(ir: IR, n, update) -> bool:
    return _is_state_read(ir, n) and ir.node(n.args[0]).arg == update.arg and \
        tuple(n.arg) == update.axes


# ---- pretty printing ----------------------------------------------------------------------
def _pretty(name, symbols, terms) -> str:
    lhs = f"{name}'[{', '.join(map(str, symbols))}]" if symbols else f"{name}'"
    parts = []
    for t in terms:
        expr = t.coef if t.state is None else t.coef * _state_symbol(t.state, t.index)
        parts.append(_collapse([Term(expr, None, (), t.sums)]))
    return f"{lhs} = {sympy.sstr(sympy.Add(*parts), order='none')}"


def _state_symbol(name: str, index: tuple):
    """S[i, j] as a sympy value; a state with no axes is a plain symbol."""
    return sympy.IndexedBase(name)[index] if index else sympy.Symbol(name)


def _pretty_nonaffine(ir, name, node) -> str:
    return f"{name}' = f({', '.join(sorted({r[0] for r in _state_reads(ir, node.id)}))}, inputs)"


def matrix_form(s: StateStructure) -> str:
    """The update as S' = A S + B in matrix notation, for affine states."""
    if s.matrix or not s.affine:
        return s.matrix or s.recurrence
    t, b = s.transition, s.input_term
    show = lambda e: sympy.sstr(e, order="none")  # noqa: E731
    decay = "I" if t.decay == 1 else f"diag({show(t.decay)})"
    if t.kind == "none":
        transition = ""
    elif t.kind == "dplr":
        low = " + ".join(f"({show(a)})({show(v)})ᵀ" for a, v in t.low_rank)
        transition = f"({decay} + {low}) {s.name} + "
    elif t.kind == "dense":
        transition = f"A {s.name} + "  # A mixes {t.mix_axes}: see the element form
    else:
        transition = f"{s.name} + " if t.decay == 1 else f"{decay} {s.name} + "
    if b.kind == "outer":
        inputs = " + ".join(f"({show(k)})({show(v)})ᵀ" for k, v in b.pairs)
    else:
        inputs = show(b.expr)
    if s.coupled_with:
        inputs += " + (terms in " + ", ".join(s.coupled_with) + ")"
    return f"{s.name}' = {transition}{inputs}".replace(" + -", " - ")


def key_axes(ir: IR, s: StateStructure) -> set[str]:
    """The axes of a state that its readouts contract (sum over): its key axes."""
    keys = set()
    # the reads of the state are the successors of its leaf and of its update: visiting
    # only those keeps the plan linear in the spec (a walk of the graph per state was not)
    sources = [i for i in (ir.leaves.get(s.name), *ir.stmts) if i is not None and
               ir.node(i).op in (Op.STATE, Op.UPDATE) and ir.node(i).arg == s.name]
    for i in (r for source in sources for r in ir.graph.successors(source)):
        n = ir.node(i)
        if n.op != Op.READ or n.stmt < 0 or ir.node(ir.stmts[n.stmt]).op == Op.UPDATE:
            continue
        owner = ir.node(ir.stmts[n.stmt]).axes
        keys |= {s.axes[p] for p, sub in enumerate(n.arg) if isinstance(sub, str) and
                 sub not in owner}
    return keys

