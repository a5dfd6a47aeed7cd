"""The operands of the chunkwise form, derived from the plan as sympy expressions.

The chunk backend runs every state in the shape of one recurrence,

    S_t = (diag(exp(w_t)) + Σ_r a_{t,r} b_{t,r}ᵀ) S_{t-1} + Σ_r k_{t,r} v_{t,r}ᵀ

with S_t viewed as a batch (the *shared* axes, e.g. heads) of matrices [key, value].
The *key* axes are those a readout contracts (qᵀS); the shared axes are the other
axes that the decay, the low-rank vectors, a key-side factor or a query varies along
(a decay along a value axis just makes that axis shared); the rest are value axes.
Each output is then computed from its *linear parts*: the largest subexpressions
that are linear in the states, written (through the affine normal form, which
inlines new states) as readouts of the previous states,

    part_t = Σ_terms post · (q_tᵀ S_{t-1}) + (a state-free term),

so that a readout of the new state becomes a readout of the previous one plus the
"bonus" of the current token, exactly as RWKV-6 writes it.

`chunk_operands(ir, plan)` returns these operands or raises `Unsupported` with a
reason a user can act on.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir import IR, Op
from .partition import Phase, phases
from .structure import StateStructure, key_axes
from .substeps import Definition, reader
from .terms import Expander, NotAffine, Term


class Unsupported(Exception):
    """The cell does not fit the chunkwise form; the message says why."""


@dataclass(frozen=True)
class ChunkState:
    name: str
    axes: tuple[str, ...]          # the state's axes, as its update names them
    shared: tuple[str, ...]
    key: tuple[str, ...]
    value: tuple[str, ...]
    log_decay: sympy.Expr          # log of the diagonal transition (0: no decay)
    decay_on_key: bool             # varies along the key axes (else one per shared index)
    positive: bool                 # the decay is provably > 0
    low_rank: tuple[tuple[sympy.Expr, sympy.Expr], ...]  # (a_r, b_r), both over the key axis
    inputs: tuple[tuple[sympy.Expr, sympy.Expr], ...]    # (key side, value side)
    defs: tuple[Definition, ...] = ()  # the vectors these read, in order (substeps.py)


@dataclass(frozen=True)
class ReadTerm:
    state: str
    query: sympy.Expr              # over the state's shared and key axes
    axes: tuple[tuple[str, str], ...]  # (state axis, node axis) for every non-key axis
    post: sympy.Expr               # a factor over node axes applied after the readout


@dataclass(frozen=True)
class LinearPart:
    node: int
    axes: tuple[str, ...]
    terms: tuple[ReadTerm, ...]
    free: sympy.Expr               # the state-free remainder, over the node's axes


@dataclass(frozen=True)
class MatState:
    """The matrix-state form: every state's chunkwise operands (decay, key, value and
    shared axes, low-rank and input terms) and the linear parts of the outputs (their
    queries), as the chunk backend and the triton matrix kernels print them."""

    states: tuple[ChunkState, ...]
    parts: tuple[LinearPart, ...]


def chunk_operands(ir: IR, structures) -> MatState:
    """The chunkwise operands of every state (given the plan's state structures) and
    the linear parts of every output."""
    for s in structures:
        _check_state(ir, s)
    expander = Expander(ir)
    for s in structures:  # a readout of a state updated in sub-steps reads its composed form
        if s.defs:
            symbols = tuple(sympy.Symbol(a, integer=True) for a in s.axes)
            expander.given[ir.update(s.name).id] = reader(expander, symbols, list(s.terms))
    parts = _linear_parts(ir, expander)
    states = tuple(_chunk_state(ir, s, [t for p in parts for t in p.terms
                                        if t.state == s.name]) for s in structures)
    return MatState(states, tuple(parts))


# ---- states --------------------------------------------------------------------------
def _at(ir: IR, s) -> str:
    """file:line:col of a state's update, for the refusals about it."""
    return f"{ir.source.filename.rsplit('/', 1)[-1]}:{s.loc}"


def _check_state(ir: IR, s) -> None:
    at = _at(ir, s)
    if not s.affine:
        raise Unsupported(f"{at}: the update of {s.name} is not affine ({s.reason})")
    if s.coupled_with:
        raise Unsupported(f"{at}: the update of {s.name} reads {', '.join(s.coupled_with)}")
    if ir.decls[s.name].dtype == "complex":
        raise Unsupported(f"{at}: {s.name} is complex; the chunkwise form is real")
    t = s.transition
    if t.kind == "dense":
        raise Unsupported(f"{at}: the transition of {s.name} mixes {', '.join(t.mix_axes)} "
                          "densely")
    keys = key_axes(ir, s)
    if t.kind == "dplr" and set(t.mix_axes) != keys:
        raise Unsupported(f"{at}: the low-rank part of {s.name} mixes "
                          f"{', '.join(t.mix_axes)}, not the axes its readouts contract "
                          f"({', '.join(sorted(keys))})")


def _chunk_state(ir: IR, s, reads: list[ReadTerm]) -> ChunkState:
    keys = tuple(a for a in s.axes if a in key_axes(ir, s))
    t = s.transition
    symbols = {a: sympy.Symbol(a, integer=True) for a in s.axes}
    key_syms = {symbols[a] for a in keys}
    if t.kind == "none":
        raise Unsupported(f"{_at(ir, s)}: {s.name} is overwritten at every step "
                          "(no recurrence)")
    log_decay = sympy.expand_log(sympy.log(t.decay), force=True) if t.decay != 1 else 0
    low_rank = ()
    if t.kind == "dplr":
        mix = symbols[keys[0]]
        low_rank = tuple((a, b.subs(sympy.Symbol("l", integer=True), mix))
                         for a, b in t.low_rank)
    free = [term for term in s.terms if term.state is None]
    pieces = [_factors(term) for term in free]
    # axes that must be batch-like: those the decay, low-rank vectors, key-side
    # factors (those with a key axis) or queries vary along, besides the keys
    key_side = [f for factors in pieces for f in factors if f.free_symbols & key_syms]
    shared = _symbols_of([t.decay] + [x for p in low_rank for x in p] + key_side +
                         [r.query for r in reads]) & set(symbols.values()) - key_syms
    inputs = []
    for term, factors in zip(free, pieces):
        key_side, value_side = [], []
        for f in factors:
            own = f.free_symbols & set(symbols.values())
            (key_side if own <= shared | key_syms else value_side).append(f)
            if own & key_syms and own - shared - key_syms:
                raise Unsupported(f"{_at(ir, s)}: the input term of {s.name} is not an "
                                  f"outer product of its key axes ({', '.join(keys)}) and "
                                  "the others")
        inputs.append((sympy.Mul(*key_side), sympy.Mul(*value_side)))
    shared_axes = tuple(a for a in s.axes if symbols[a] in shared)
    value = tuple(a for a in s.axes if a not in keys and a not in shared_axes)
    positive = bool(t.positive) or t.decay == 1
    decay_on_key = bool(sympy.sympify(t.decay).free_symbols & key_syms)
    return ChunkState(s.name, s.axes, shared_axes, keys, value, log_decay, decay_on_key,
                      positive, low_rank, tuple(inputs), s.defs)


def _factors(term: Term) -> list[sympy.Expr]:
    """The factors of a state-free term, sums kept around the factors they bind."""
    summed = {s for s, _ in term.sums}
    outer, inner = [], []
    for f in sympy.Mul.make_args(term.coef):
        (inner if f.free_symbols & summed else outer).append(f)
    if inner:
        outer.append(sympy.Sum(sympy.Mul(*inner), *[(s, 0, n - 1) for s, n in term.sums]))
    return outer


def _symbols_of(exprs) -> set:
    found = set()
    for e in exprs:
        found |= sympy.sympify(e).free_symbols
    return found


# ---- readouts ------------------------------------------------------------------------
def _linear_parts(ir: IR, expander: Expander) -> list[LinearPart]:
    phase = phases(ir)
    parts: list[LinearPart] = []
    seen: set[int] = set()
    for i in ir.stmts:
        node = ir.node(i)
        if node.op == Op.OUT and phase[i] == Phase.CORE:
            _collect(ir, expander, node.args[0], phase, parts, seen)
    return parts


def _collect(ir, expander, i, phase, parts, seen) -> None:
    """Finds the largest subexpressions below node i that are linear in the states."""
    if i in seen or phase[i] != Phase.CORE:
        return
    seen.add(i)
    node = ir.node(i)
    env = {a: sympy.Symbol(a, integer=True) for a in node.axes}
    try:
        terms = expander.terms(i, env)
    except NotAffine:
        if node.op == Op.READ:
            source = ir.node(node.args[0])
            if source.op in (Op.LET, Op.OUT):  # a statement: look inside it
                return _collect(ir, expander, source.args[0], phase, parts, seen)
        for a in node.args:
            _collect(ir, expander, a, phase, parts, seen)
        return
    parts.append(_linear_part(ir, node, env, terms))


def _linear_part(ir, node, env, terms) -> LinearPart:
    names = {v: k for k, v in env.items()}
    reads, free = [], sympy.Integer(0)
    for t in terms:
        if t.state is None:
            free += sympy.Sum(t.coef, *[(s, 0, n - 1) for s, n in t.sums]) if t.sums \
                else t.coef
            continue
        reads.append(_read_term(ir, node, t, names))
    return LinearPart(node.id, node.axes, tuple(reads), free)


def _read_term(ir, node, t: Term, names) -> ReadTerm:
    update = ir.update(t.state)
    keys = _keys_by_position(ir, t.state)
    summed = {s for s, _ in t.sums}
    where = f"{ir.source.filename.rsplit('/', 1)[-1]}:{ir.node(ir.stmts[node.stmt]).loc}"
    to_state, axes = {}, []
    for p, (sub, axis) in enumerate(zip(t.index, update.axes)):
        state_symbol = sympy.Symbol(axis, integer=True)
        if p in keys:
            if sub not in summed or sub in to_state:
                raise Unsupported(f"{where}: {t.state} is read without contracting its "
                                  f"key axis {axis}")
            to_state[sub] = state_symbol
        elif sub in names and sub not in to_state:
            to_state[sub] = state_symbol
            axes.append((axis, names[sub]))
        else:
            raise Unsupported(f"{where}: {t.state} is read at {sub} along {axis}; the "
                              "chunkwise form reads whole rows of the state")
    extra = [(s, n) for s, n in t.sums if s not in to_state]  # Σ_i q_i (-β k_i k_l) S_l
    query, post = [], []
    for f in sympy.Mul.make_args(t.coef):
        own = f.free_symbols & (set(names) | summed)
        (query if own <= set(to_state) | summed else post).append(f)
        if own & summed and not own <= set(to_state) | summed:
            raise Unsupported(f"{where}: the query of {t.state} is not separable")
    q = sympy.Mul(*query)
    if extra:
        q = sympy.Sum(q, *[(s, 0, n - 1) for s, n in extra])
    return ReadTerm(t.state, q.xreplace(to_state), tuple(axes), sympy.Mul(*post))


def _keys_by_position(ir: IR, state: str) -> set[int]:
    """Positions of the key axes of a state (those its readouts contract)."""
    update = ir.update(state)
    keys = key_axes(ir, StateStructure(state, update.axes, True))
    return {p for p, a in enumerate(update.axes) if a in keys}
