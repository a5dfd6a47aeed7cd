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

Every other axis is elementwise, so the vectors may vary along it. The vectors are
stacked along a rank index, and each sub-step that updates them is one `Definition` of
the stack over the one before (Composer), so the composed form, and the code printed
from it, grow linearly with NH instead of doubling.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir import IR, Op
from .partition import Phase, phases
from .terms import Expander, NotAffine, Term


@dataclass(frozen=True)
class Definition:
    """Vectors of a composed update, stacked along a rank index: `name[index] = value`
    (value reads the inputs and the definitions before it; sizes: of each index)."""

    name: str
    index: tuple[sympy.Symbol, ...]
    sizes: tuple[int, ...]
    value: sympy.Expr

    def at(self, *index):
        return sympy.IndexedBase(self.name, real=True)[index]


def substeps(ir: IR, update: int, phase: dict | None = None) -> list[int] | None:
    """The statements a state's update goes through, first to last (the update itself),
    when it is a chain of at least two sub-steps; else None. `phase`: the IR's phases,
    when the caller has them (computing them per state made the plan quadratic)."""
    state = ir.node(update).arg
    shape, phase = ir.decls[state].shape, phase or phases(ir)
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
    """Composes the sub-steps of one state's update (see the module docstring). The
    vectors A_r (and K_p) are kept stacked along a rank index ρ, one definition per
    sub-step that updates those before it, so the definitions grow linearly too:
        A_m[ρ] = where(ρ < R_m, D_m ⊙ A_{m-1}[ρ] + Σ_q a_q (b_q · A_{m-1}[ρ]), A_{m-1}[ρ])
    with A_0[ρ] the ρ-th sub-step vector as its sub-step makes it."""

    def __init__(self, ir: IR, expander: Expander, update: int, transition):
        node = ir.node(update)
        self.ir, self.expander, self.name = ir, expander, node.arg
        self.axes, self.sizes = node.axes, node.sizes
        self.symbols = tuple(sympy.Symbol(a, integer=True) for a in node.axes)
        self.transition = transition  # structure._transition, to read each step
        self.defs: list[Definition] = []
        self.taken = set(ir.decls) | {str(ir.node(i).arg) for i in ir.stmts}
        self.rank = sympy.Symbol(self._fresh("rank"), integer=True)  # ρ
        self.mix: int | None = None  # the position of the axis the low-rank parts mix

    def compose(self, chain: list[int]) -> tuple[list[Term], tuple[Definition, ...]] | None:
        """The composed terms of the update and their definitions, or None when a
        sub-step is not diagonal plus low rank along one axis, or none has a low-rank
        part (each sub-step then reads the previous once): the caller expands."""
        steps = self._steps(chain)
        if steps is None or self.mix is None:
            return None
        prefix = [sympy.Integer(1)]  # the decay of the sub-steps before each
        for t, _ in steps:
            prefix.append(prefix[-1] * t.decay)
        l = sympy.Symbol("l", integer=True)  # the right vectors b are written over l
        at_l = {self.symbols[self.mix]: l}
        pairs = [(a, b * prefix[m].subs(at_l), m) for m, (t, _) in enumerate(steps)
                 for a, b in t.low_rank]
        inputs = [(*self._split(f), m) for m, (_, free) in enumerate(steps) for f in free]
        made = {"a": pairs, "k": inputs}
        stacks = {side: self._stack(f"{side}0", [p[0] for p in made[side]]) for side in made}
        for m, (t, _) in enumerate(steps):
            for side, stack in stacks.items():
                before = sum(1 for p in made[side] if p[2] < m)
                if before and (t.low_rank or t.decay != 1):
                    stacks[side] = self._apply(t, stack, before, f"{side}{m}")
            # the decay stays a product, not named: its sign and bounds show
            terms = self._terms(prefix[m + 1], stacks["a"], stacks["k"], pairs, inputs, m)
            self.expander.given[chain[m]] = reader(self.expander, self.symbols, terms)
        return terms, tuple(self.defs)

    def _steps(self, chain: list[int]) -> list | None:
        """Each sub-step's transition and input terms, read as maps of the previous one."""
        given, steps = self.expander.given, []
        for m, i in enumerate(chain):
            if m:  # the previous sub-step, read as the state itself
                given[chain[m - 1]] = self._as_state
            node = self.ir.node(i)
            try:
                terms = self.expander.terms(node.args[0], dict(zip(node.axes, self.symbols)))
            except NotAffine:
                return None
            finally:
                if m:
                    given.pop(chain[m - 1])
            if any(t.state not in (None, self.name) for t in terms):
                return None
            own = [t for t in terms if t.state == self.name]
            t = self.transition(own, self.symbols, self.axes, self.expander, self.sizes)
            if t.kind in ("dense", "none"):
                return None
            if t.kind == "dplr":
                mix = self.axes.index(t.mix_axes[0])
                if self.mix not in (None, mix):
                    return None
                self.mix = mix
            steps.append((t, [x for x in terms if x.state is None]))
        return steps

    def _as_state(self, index) -> list[Term]:
        return [Term(sympy.Integer(1), self.name, index)]

    def _stack(self, side: str, vectors: list):
        """A_0: the sub-steps' own vectors, the ρ-th at ρ (None when there are none)."""
        if not vectors:
            return None
        pieces = [(v, sympy.Eq(self.rank, r)) for r, v in enumerate(vectors[:-1])]
        return self._define(side, sympy.Piecewise(*pieces, (vectors[-1], True)),
                            len(vectors))

    def _apply(self, t, stack: Definition, before: int, role: str) -> Definition:
        """The stack with a sub-step's transition applied to its first `before` vectors."""
        x = stack.at(*stack.index)
        value = t.decay * x
        mix = self.symbols[self.mix]
        inner = self.expander._new_index(self.axes[self.mix])
        for a, b in t.low_rank:
            dot = b.subs(sympy.Symbol("l", integer=True), inner) * x.subs(mix, inner)
            value += a * sympy.Sum(dot, (inner, 0, self.sizes[self.mix] - 1))
        updated = sympy.Piecewise((value, sympy.StrictLessThan(self.rank, before)), (x, True))
        return self._define(role, updated, stack.sizes[0])

    def _split(self, term: Term) -> tuple:
        """A sub-step's input term as (the factors along the mixing axis, the rest)."""
        coef = sympy.Sum(term.coef, *[(s, 0, n - 1) for s, n in term.sums]) if term.sums \
            else term.coef
        mix = {self.symbols[self.mix]}
        key = [f for f in sympy.Mul.make_args(coef) if f.free_symbols & mix]
        rest = [f for f in sympy.Mul.make_args(coef) if not f.free_symbols & mix]
        return sympy.Mul(*key), sympy.Mul(*rest)

    def _fresh(self, role: str) -> str:
        name = f"_{self.name}_{role}"
        while name in self.taken:
            name = "_" + name
        self.taken.add(name)
        return name

    def _define(self, role: str, value, rank: int) -> Definition:
        """A stack of `rank` vectors over the state axes its value varies along."""
        own = [p for p, x in enumerate(self.symbols) if x in value.free_symbols]
        d = Definition(self._fresh(role), (self.rank, *(self.symbols[p] for p in own)),
                       (rank, *(self.sizes[p] for p in own)), value)
        self.defs.append(d)
        if _reads_time_varying(self.expander, value):
            self.expander.time_varying.add(d.name)
        return d

    def _terms(self, decay, stack_a, stack_k, pairs, inputs, m: int) -> list[Term]:
        """The update composed up to sub-step m, as terms of the normal form."""
        out = [Term(decay, self.name, self.symbols)] if decay != 0 else []
        l = sympy.Symbol("l", integer=True)  # the right vectors b are written over l
        for r, (_, b, k) in enumerate(pairs):
            if k <= m:
                inner = self.expander._new_index(self.axes[self.mix])
                index = tuple(inner if p == self.mix else s for p, s in enumerate(self.symbols))
                out.append(Term(stack_a.at(r, *stack_a.index[1:]) * b.subs(l, inner),
                                self.name, index, ((inner, self.sizes[self.mix]),)))
        out += [Term(stack_k.at(p, *stack_k.index[1:]) * v)
                for p, (_, v, k) in enumerate(inputs) if k <= m]
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
