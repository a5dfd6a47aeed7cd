"""What the chunk program (codegen/chunk.py) reads off the analyzer's operands: the
expressions of a state's roles and the definitions they read, which states can share
one pass, the delta rule's scale, and the sympy lowering of its operands."""

from __future__ import annotations

import sympy

from reclang.analysis.operands import ChunkState
from reclang.ir import IR

from .ir_to_torch import ATOM, Code
from .sympy_to_torch import SympyLowering, spec_indices


class ChunkSympyLowering(SympyLowering):
    """The analyzer's expressions in PyTorch, with a dot product along the summed axes
    (every factor that carries them has the same axes: mLSTM's own-step term
    Σ_a k[h, a] q[h, a]) as a product and a sum. einsum makes it a bmm of [N, 1, K] x
    [N, K, 1], whose backward runs bmms of 1 x 1 matrices: 112 ms of mLSTM's 1.1 s
    forward+backward at B = 8, T = 1024, H = 4, K = 64 (torch.profiler, one thread)."""

    def sum(self, expr: sympy.Sum) -> Code:
        indexed = spec_indices(expr)
        body, limits = indexed.args[0], indexed.args[1:]
        summed = {s for s, _, _ in limits}
        factors = sympy.Mul.make_args(body)
        carrying = [f for f in factors if f.free_symbols & summed]
        codes = [self._lower(f) for f in carrying]
        if len(codes) < 2 or len({frozenset(c.axes) for c in codes}) != 1 or \
                any(c.const or self.is_complex(f) for c, f in zip(codes, carrying)):
            return super().sum(expr)
        for s, lo, hi in limits:
            self.sizes[str(s)] = int(hi - lo + 1)
        inner = self.product(codes)
        names = [str(s) for s in summed]
        dims = tuple(inner.axes.index(a) - len(inner.axes) for a in names)
        dot = Code(f"({inner.text}).sum({dims if len(dims) > 1 else dims[0]})", ATOM,
                   tuple(a for a in inner.axes if a not in names))
        rest = [self._lower(f) for f in factors if not f.free_symbols & summed]
        return self.product(rest + [dot]) if rest else dot


def role_exprs(s: ChunkState, queries: list, roles: str) -> list:
    """The analyzer's expressions of a state's operands in `roles` (of w, a, b, k, v, q)."""
    by_role = {"w": [s.log_decay], "a": [p[0] for p in s.low_rank],
               "b": [p[1] for p in s.low_rank], "k": [p[0] for p in s.inputs],
               "v": [p[1] for p in s.inputs], "q": list(queries)}
    return [sympy.sympify(e) for r in roles for e in by_role[r]]


def definitions_read(s: ChunkState, exprs: list) -> list:
    """The state's definitions that `exprs` read, directly or through later ones, in
    order (a definition reads only those before it)."""
    read = set().union(*(_bases(e) for e in exprs))
    needed = []
    for d in reversed(s.defs):
        if d.name in read:
            needed.append(d)
            read |= _bases(d.value)
    return needed[::-1]


def _bases(expr) -> set[str]:
    return {str(x.base) for x in expr.atoms(sympy.Indexed)}


def same_but_values(s: ChunkState, other: ChunkState, queries: dict, ir: IR) -> bool:
    """Whether two states differ only in their input terms' value sides (and their own
    value axes): the same shared and key axes (names and sizes), log decay, key sides
    and readout queries, neither with a low-rank part or sub-step definitions."""
    def sizes(x, axes):
        return [dict(zip(x.axes, ir.decls[x.name].shape))[a] for a in axes]
    return (not s.low_rank and not other.low_rank and not s.defs and not other.defs
            and (s.shared, s.key) == (other.shared, other.key)
            and sizes(s, s.shared + s.key) == sizes(other, other.shared + other.key)
            and s.decay_on_key == other.decay_on_key and s.positive == other.positive
            and sympy.simplify(s.log_decay - other.log_decay) == 0
            and [p[0] for p in s.inputs] == [p[0] for p in other.inputs]
            and queries.get(s.name, []) == queries.get(other.name, []))


def delta_rule_scale(s: ChunkState):
    """a / k when the state has one low-rank term a bᵀ and one input term k vᵀ with a a
    multiple of k along the key axes (the delta rule: a = -β k, or -exp(g) β k), else
    None."""
    if len(s.low_rank) != 1 or len(s.inputs) != 1:
        return None
    ratio = s.low_rank[0][0] / s.inputs[0][0]  # sympy cancels the common factors
    if ratio == 0 or any(str(x) in s.key for x in ratio.free_symbols):
        return None
    return ratio
