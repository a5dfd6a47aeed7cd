"""The affine normal form of a value: a sum of terms, each a state-free coefficient
times at most one read of a previous state, under some sums.

    S[h,i,j] + beta[h] * k[h,i] * (v[h,j] - sum(l: k[h,l] * S[h,l,j]))
      = 1 · S[h,i,j]  +  beta[h] k[h,i] v[h,j]  +  Σ_l (−beta[h] k[h,i] k[h,l]) · S[h,l,j]

Values are expanded element-wise with sympy: index names become sympy symbols, inputs,
params and state-free intermediates become `Indexed` objects (so `exp(g[h, i])` stays
readable), and every `let` or new state that depends on a state is inlined, so the
form speaks only of the previous step's states. A value that is not affine in the
states (a state read through tanh, a product of two state reads) raises `NotAffine`
with the offending node.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy

from ..functions import SYMPY  # IR functions as sympy ones, for state-free coefficients
from ..ir import IR, IndexExpr, Node, Op
from .partition import Phase, phases


class NotAffine(Exception):
    """The value is not affine in the states; `node` is the first place that shows it."""

    def __init__(self, reason: str, node: Node):
        super().__init__(reason)
        self.reason, self.node = reason, node


@dataclass(frozen=True)
class Term:
    coef: sympy.Expr                  # state-free
    state: str | None = None          # the state read, or None for a state-free term
    index: tuple = ()                 # its subscripts (sympy symbols or integers)
    sums: tuple[tuple[sympy.Symbol, int], ...] = ()  # (index, size) summed over

    def scaled(self, factor) -> Term:
        return Term(self.coef * factor, self.state, self.index, self.sums)


class Expander:
    """Computes affine normal forms of nodes of one IR."""

    def __init__(self, ir: IR, frozen: frozenset[str] = frozenset(), inline: bool = True):
        self.ir = ir
        self.frozen = frozen  # states treated as given values (a running max, say)
        self.inline = inline  # False keeps state-free intermediates by name, for display
        self.phase = self.plain_phase = phases(ir)  # plain: with no state frozen
        if frozen:
            self.phase = {i: (Phase.PRELUDE if p == Phase.CORE and not self._reads_free(i)
                              else p) for i, p in self.phase.items()}
        self.fresh = itertools.count()
        self.time_varying: set[str] = {d.name for d in ir.inputs}
        # node id -> index -> terms: statements whose normal form is given, not expanded
        # (a state updated in sub-steps, composed once: see substeps.py)
        self.given: dict = {}

    def _reads_free(self, i: int) -> bool:
        """Whether node i depends on a state that is not frozen."""
        import networkx as nx

        return any(self.ir.node(a).op == Op.STATE and self.ir.node(a).arg not in self.frozen
                   for a in nx.ancestors(self.ir.graph, i) | {i})

    # ---- state-free values as sympy expressions
    def symbolic(self, i: int, env: dict) -> sympy.Expr:
        """A state-free node as a sympy expression over indexed symbols."""
        node = self.ir.node(i)
        if node.op == Op.CONST:
            return sympy.sympify(node.arg)
        if node.op == Op.INDEX:
            return env[node.arg]
        if node.op == Op.READ and self.ir.node(node.args[0]).op in (Op.STATE, Op.UPDATE) \
                and self.ir.node(node.args[0]).arg in self.frozen:
            return self._frozen_symbol(node, env)
        if node.op == Op.READ:
            return self._read_symbol(node, env)
        if node.op in (Op.LET, Op.OUT, Op.UPDATE):
            return self.symbolic(node.args[0], env)
        if node.op == Op.FN and node.arg not in SYMPY:
            raise NotAffine(f"{node.arg} has no symbolic form", node)
        if node.op == Op.FN:
            return SYMPY[node.arg](*(self.symbolic(a, env) for a in node.args))
        if node.op == Op.REDUCE:
            kind, reduced = node.arg
            inner = dict(env)
            limits = []
            for r, size in zip(reduced, self._sizes(node.args[0], reduced)):
                inner[r] = self._new_index(r)
                limits.append((inner[r], 0, size - 1))
            body = self.symbolic(node.args[0], inner)
            if kind == "sum":
                return sympy.Sum(body, *limits)
            # each index with its size: a printer needs it for an index used as a value
            # (pairs, not Tuples: sympy's tanh recurses on an Add with a Tuple inside)
            return sympy.Function(kind)(body, *[x for s, _, hi in limits for x in (s, hi + 1)])
        raise AssertionError(f"unexpected {node.op} in a state-free value")

    def _read_symbol(self, node: Node, env: dict):
        source = self.ir.node(node.args[0])
        index = state_index(node, source, env)  # a computed one: of a state (hoist.py)
        if source.op in (Op.LET, Op.OUT) and (self.inline or self.phase[source.id] == Phase.CORE):
            # inline intermediates, so that the form does not depend on how it is spelled
            return self.symbolic(source.args[0], dict(zip(source.axes, index)))
        base = sympy.IndexedBase(str(source.arg), real=source.dtype != "complex")
        return base[index] if index else sympy.Symbol(str(source.arg),
                                                      real=source.dtype != "complex")

    def _frozen_symbol(self, node: Node, env: dict):
        """A frozen state: `m_prev[...]` before its update, `m_new[...]` after."""
        source = self.ir.node(node.args[0])
        suffix = "prev" if source.op == Op.STATE else "new"
        index = state_index(node, source, env)
        name = f"{source.arg}_{suffix}"
        self.time_varying.add(name)
        return sympy.IndexedBase(name, real=True)[index] if index else sympy.Symbol(name, real=True)

    def _sizes(self, i: int, axes) -> list[int]:
        node = self.ir.node(i)
        return [node.sizes[node.axes.index(a)] for a in axes]

    def _new_index(self, name: str) -> sympy.Symbol:
        return sympy.Symbol(f"{name}{next(self.fresh)}", integer=True)

    # ---- the normal form
    def terms(self, i: int, env: dict) -> list[Term]:
        """The affine normal form of node i, its axes named by `env`."""
        node = self.ir.node(i)
        if self.phase[i] != Phase.CORE:
            return [Term(self.symbolic(i, env))]
        method = getattr(self, "terms_" + node.op.name.lower(), None)
        if method is None:  # an op this pass has no rule for: refuse the form at the node
            raise NotAffine(f"no affine rule for a {node.op.name.lower()} node", node)
        return method(node, env)

    def terms_read(self, node: Node, env: dict) -> list[Term]:
        source = self.ir.node(node.args[0])
        index = state_index(node, source, env)
        if source.op == Op.STATE:
            return [Term(sympy.Integer(1), source.arg, index)]
        if source.id in self.given:
            return self.given[source.id](index)
        # an intermediate or a new state that depends on a state: inline its value
        inner = {axis: value for axis, value in zip(source.axes, index)}
        return self.terms(source.args[0], inner)

    def terms_fn(self, node: Node, env: dict) -> list[Term]:
        name = node.arg
        args = [self.terms(a, env) for a in node.args]
        if name == "add":
            return args[0] + args[1]
        if name == "sub":
            return args[0] + [t.scaled(-1) for t in args[1]]
        if name == "neg":
            return [t.scaled(-1) for t in args[0]]
        if name == "mul":
            return self._product(node, args[0], args[1])
        if name == "div" and _state_free(args[1]):
            return [t.scaled(1 / _collapse(args[1])) for t in args[0]]
        if name == "pow" and _state_free(args[1]) and _collapse(args[1]) == 1:
            return args[0]
        raise NotAffine(f"read through {node.origin or name}", node)

    def _product(self, node, left, right) -> list[Term]:
        if not _state_free(left) and not _state_free(right):
            raise NotAffine("a product of two state-dependent values", node)
        result = []
        for a, b in itertools.product(left, right):
            state = a if a.state else b
            result.append(Term(a.coef * b.coef, state.state, state.index, a.sums + b.sums))
        return result

    def terms_reduce(self, node: Node, env: dict) -> list[Term]:
        kind, reduced = node.arg
        if kind != "sum":
            raise NotAffine(f"read through {node.origin}" if node.origin else
                            f"reduced with {kind}", node)
        inner = dict(env)
        new = [self._new_index(r) for r in reduced]
        inner.update(zip(reduced, new))
        sums = tuple(zip(new, self._sizes(node.args[0], reduced)))
        return [Term(t.coef, t.state, t.index, t.sums + sums)
                for t in self.terms(node.args[0], inner)]

    def terms_let(self, node: Node, env: dict) -> list[Term]:
        return self.terms(node.args[0], env)

    terms_update = terms_out = terms_let

    def terms_state(self, node: Node, env: dict) -> list[Term]:  # pragma: no cover
        raise AssertionError("states are read through READ nodes")


def _state_free(terms: list[Term]) -> bool:
    return all(t.state is None for t in terms)


def _collapse(terms: list[Term]) -> sympy.Expr:
    """A state-free form back into one sympy expression."""
    total = sympy.Integer(0)
    for t in terms:
        total += sympy.Sum(t.coef, *[(s, 0, n - 1) for s, n in t.sums]) if t.sums else t.coef
    return total


def state_index(node: Node, source: Node, env: dict) -> tuple:
    """The subscripts of a read of a value that depends on a state. A computed one (a
    shift, a gather: reclang/hoist.py hoists those of state-free values) has no affine
    rule: the form is refused at the read."""
    computed = next((s for s in node.arg if isinstance(s, IndexExpr)), None)
    if computed is not None:
        raise NotAffine(f"read at the computed subscript {source.arg}[{computed}], which "
                        "only the sequential loop runs", node)
    return tuple(env[s] if isinstance(s, str) else sympy.Integer(s) for s in node.arg)
