"""A state updated in sub-steps (a `for` block's iterations), composed step by step.

A for block that updates S NH times unrolls to a chain S_0 = f_0(S), S_1 = f_1(S_0), …,
S' = f_n(S_{n-1}). Expanding S' through the chain (terms.py inlines every let) doubles
the normal form at each sub-step, because S_{m-1} is read twice (as itself and in the
low-rank contraction): the product of NH Householder steps (DeltaProduct) would have
2^NH terms, and so would the operands printed from it. Instead each sub-step is taken
alone, as an affine map of the previous one,

    S_m = D_m ⊙ S_{m-1} + Σ_q a_q (b_qᵀ S_{m-1}) + f_m      (mixing along one axis),

and the maps are composed into S_m = P ⊙ S + Σ_r A_r (B_rᵀ S) + Σ_p K_p V_p:

    A_r ← D_m ⊙ A_r + Σ_q a_q (b_q · A_r),   K_p alike,   new pairs (a_q, P ⊙ b_q),
    new input terms f_m,   P ← D_m ⊙ P.

Every other axis is elementwise, so the vectors may vary along it. Each updated vector
is a `Definition` (a name, the state axes it varies along, its value over the previous
ones), so the composed form, and the code printed from it, grow linearly with NH
instead of doubling.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir import IR, Op
from .partition import Phase, phases
from .terms import Expander, NotAffine, Term


@dataclass(frozen=True)
class Definition:
    """A vector of a composed update: `name[index] = value` (value reads the inputs
    and the definitions before it)."""

    name: str
    index: tuple[sympy.Symbol, ...]
    value: sympy.Expr

    @property
    def symbol(self):
        base = sympy.IndexedBase(self.name, real=True)
        return base[self.index] if self.index else sympy.Symbol(self.name, real=True)


def substeps(ir: IR, update: int) -> list[int] | None:
    """The statements a state's update goes through, first to last (the update itself),
    when it is a chain of at least two sub-steps; else None."""
    state = ir.node(update).arg
    shape, phase = ir.decls[state].shape, phases(ir)
    chain = [update]
    while True:
        direct, previous = _step_reads(ir, ir.node(chain[-1]).args[0], state, shape, phase)
        if direct is None or (direct and previous) or len(previous) > 1:
            return None
        if not previous:
            return chain[::-1] if len(chain) > 1 and direct else None
        chain.append(previous.pop())


def _step_reads(ir: IR, root: int, state: str, shape, phase):
    """(whether the value reads the state, the lets of the state's shape it reads),
    looking through the other lets that depend on a state; (None, _) when it reads
    another state."""
    direct, previous, stack, seen = False, set(), [root], set()
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        node = ir.node(i)
        if node.op != Op.READ:
            stack.extend(node.args)
            continue
        source = ir.node(node.args[0])
        if phase[source.id] != Phase.CORE:
            continue
        if source.op == Op.STATE and source.arg == state:
            direct = True
        elif source.op == Op.LET and source.sizes == shape:
            previous.add(source.id)
        elif source.op == Op.LET:
            stack.append(source.args[0])
        else:
            return None, previous
    return direct, previous


class Composer:
    """Composes the sub-steps of one state's update (see the module docstring)."""

    def __init__(self, ir: IR, expander: Expander, update: int, transition):
        node = ir.node(update)
        self.ir, self.expander, self.name = ir, expander, node.arg
        self.axes, self.sizes = node.axes, node.sizes
        self.symbols = tuple(sympy.Symbol(a, integer=True) for a in node.axes)
        self.transition = transition  # structure._transition, to read each step
        self.defs: list[Definition] = []
        self.taken = set(ir.decls) | {str(ir.node(i).arg) for i in ir.stmts}
        self.mix: int | None = None  # the position of the axis the low-rank parts mix
        self.decay = sympy.Integer(1)
        self.pairs: list[tuple] = []   # (A_r over the state's symbols, B_r over l)
        self.inputs: list[tuple] = []  # (K_p, V_p)

    def compose(self, chain: list[int]) -> tuple[list[Term], tuple[Definition, ...]] | None:
        """The composed terms of the update and their definitions, or None when a
        sub-step is not diagonal plus low rank along one axis, or none has a low-rank
        part (each sub-step then reads the previous once): the caller expands."""
        given, composed = self.expander.given, {}
        for m, i in enumerate(chain):
            if m:  # the previous sub-step, read as the state itself
                given[chain[m - 1]] = self._as_state
            node = self.ir.node(i)
            try:
                ok = self._step(m, self.expander.terms(node.args[0],
                                                       dict(zip(node.axes, self.symbols))))
            except NotAffine:
                ok = False
            given.update(composed)
            if not ok:
                return None
            composed[i] = given[i] = reader(self.expander, self.symbols, self.terms())
        if self.mix is None:
            for i in chain:
                given.pop(i)
            return None
        return self.terms(), tuple(self.defs)

    def _as_state(self, index) -> list[Term]:
        return [Term(sympy.Integer(1), self.name, index)]

    def _step(self, m: int, terms: list[Term]) -> bool:
        if any(t.state not in (None, self.name) for t in terms):
            return False
        own = [t for t in terms if t.state == self.name]
        t = self.transition(own, self.symbols, self.axes, self.expander, self.sizes)
        if t.kind in ("dense", "none"):
            return False
        if t.kind == "dplr":
            mix = self.axes.index(t.mix_axes[0])
            if self.mix not in (None, mix):
                return False
            self.mix = mix
        self.pairs = [(self._apply(t, A, f"a{m}_{r}"), B) for r, (A, B) in
                      enumerate(self.pairs)]
        self.inputs = [(self._apply(t, K, f"k{m}_{p}"), V) for p, (K, V) in
                       enumerate(self.inputs)]
        on_l = self._at_l(self.decay)
        self.pairs += [(a, b * on_l) for a, b in t.low_rank]
        self.inputs += [self._split(term) for term in terms if term.state is None]
        self.decay = t.decay * self.decay  # a product, not named: its sign and bounds show
        return True

    def _apply(self, t, x, name: str):
        """The step's transition applied to a vector x (over the state's symbols)."""
        value = t.decay * x
        if not t.low_rank:  # a diagonal step reads x once: nothing to name
            return value
        mix = self.symbols[self.mix]
        inner = self.expander._new_index(self.axes[self.mix])
        size = self.sizes[self.mix]
        for a, b in t.low_rank:
            dot = b.subs(sympy.Symbol("l", integer=True), inner) * x.subs(mix, inner)
            value += a * sympy.Sum(dot, (inner, 0, size - 1))
        return self._define(name, value)

    def _at_l(self, x):
        """x along the mixing axis at l, as the right vectors b are written."""
        if self.mix is None:
            return x
        return x.subs(self.symbols[self.mix], sympy.Symbol("l", integer=True))

    def _split(self, term: Term) -> tuple:
        """A sub-step's input term as (the factors along the mixing axis, the rest)."""
        coef = sympy.Sum(term.coef, *[(s, 0, n - 1) for s, n in term.sums]) if term.sums \
            else term.coef
        mix = {self.symbols[self.mix]} if self.mix is not None else set(self.symbols)
        key = [f for f in sympy.Mul.make_args(coef) if f.free_symbols & mix]
        rest = [f for f in sympy.Mul.make_args(coef) if not f.free_symbols & mix]
        return sympy.Mul(*key), sympy.Mul(*rest)

    def _define(self, role: str, value):
        name = f"_{self.name}_{role}"
        while name in self.taken:
            name = "_" + name
        self.taken.add(name)
        index = tuple(s for s in self.symbols if s in value.free_symbols)
        d = Definition(name, index, value)
        self.defs.append(d)
        if _reads_time_varying(self.expander, value):
            self.expander.time_varying.add(name)
        return d.symbol

    def terms(self) -> list[Term]:
        """The composed update so far, as terms of the normal form."""
        out = [Term(self.decay, self.name, self.symbols)] if self.decay != 0 else []
        for A, B in self.pairs:
            inner = self.expander._new_index(self.axes[self.mix])
            index = tuple(inner if p == self.mix else s for p, s in enumerate(self.symbols))
            out.append(Term(A * B.subs(sympy.Symbol("l", integer=True), inner), self.name,
                            index, ((inner, self.sizes[self.mix]),)))
        out += [Term(K * V) for K, V in self.inputs]
        return out


def reader(expander: Expander, symbols, terms: list[Term]):
    """index -> the terms read at that index (fresh summation indices for each read)."""

    def read(index) -> list[Term]:
        out = []
        for t in terms:
            fresh = {s: expander._new_index(str(s).rstrip("0123456789")) for s, _ in t.sums}
            at = dict(zip(symbols, index)) | fresh
            out.append(Term(t.coef.xreplace(at), t.state,
                            tuple(sympy.sympify(x).xreplace(at) for x in t.index),
                            tuple((fresh[s], n) for s, n in t.sums)))
        return out

    return read


def _reads_time_varying(expander: Expander, value) -> bool:
    names = {str(getattr(x, "base", x)) for x in value.atoms(sympy.Indexed, sympy.Symbol)}
    return bool(names & expander.time_varying)
