"""Rewrites of the IR: a table of rules applied to a fixed point, after the IR is built
and before it is analyzed.

Each rule is one row `(name, match, rewrite, why)`: `match(ir, node)` says what the
rewrite needs (None where the rule does not apply), and `rewrite(ir, node, found)`
adds the node's replacement to the graph and returns it (None: the node goes). The
driver visits the nodes in topological order, gives a node's readers its replacement,
and starts again until no rule applies. A rule keeps every value up to rounding (a
re-associated sum of floats may round differently), so the differential tests of every
backend against the sequential one in float64 check them all. RECLANG_DEBUG=5 prints
each rule that fires, with the node and its replacement.

The printers' rewrites of sympy expressions (1/(1 + e^-x) -> sigmoid(x), ...) are a
table of the same shape in reclang/codegen/sympy_to_torch.py.
"""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass, replace
from typing import Callable

import networkx as nx

from . import config
from .errors import Loc, RecError
from .functions import FUNCTIONS
from .ir import DEFINITIONS, IR, LEAVES, Node, Op


@dataclass(frozen=True)
class Rule:
    name: str
    match: Callable    # (ir, node) -> what the rewrite needs, or None
    rewrite: Callable  # (ir, node, found) -> the id of its replacement, or None
    why: str


# ---- constant folding (also what the IR builder calls on constant operands)
def fold(fn, values: list, loc: Loc):
    """`fn` on constants, as a RecError at `loc` when it fails or leaves float64 (the
    result becomes a literal of the generated code). A power is bounded before it is
    computed: `9 ** 9 ** 9` would take hours and gigabytes."""
    if fn.name == "pow" and _power_too_large(*values):
        raise RecError(f"{clip(values[0])} ** {clip(values[1])} is too large: constants "
                       f"must be at most {config.NUMBER:.3g} in magnitude", loc=loc)
    try:
        value = fn.fold(*values)
    except (ZeroDivisionError, ValueError, OverflowError, TypeError) as err:
        raise RecError(f"{fn.name} of constants fails: {err}", loc=loc) from None
    if isinstance(value, bool):
        return value
    if isinstance(value, complex):
        finite = cmath.isfinite(value) and max(abs(value.real), abs(value.imag)) <= config.NUMBER
    else:
        finite = (not isinstance(value, float) or math.isfinite(value)) and \
            abs(value) <= config.NUMBER
    if not finite and _infinite(value) and any(_infinite(v) for v in values):
        return value  # inf in, inf out: `-inf` is a constant (a max's starting value)
    if not finite:
        raise RecError(f"{fn.name} of constants is not finite in float64 (magnitude above "
                       f"{config.NUMBER:.3g})", loc=loc)
    return value


def _infinite(value) -> bool:
    return isinstance(value, float) and math.isinf(value)


def _power_too_large(base, exponent) -> bool:
    """Whether |base ** exponent| exceeds config.NUMBER, judged from logarithms."""
    if isinstance(base, complex) or isinstance(exponent, complex) or abs(base) <= 1:
        return False
    return exponent > 0 and exponent * math.log2(abs(base)) > math.log2(config.NUMBER)


def clip(value, n: int = 20) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def const_dtype(value) -> str:
    return "complex" if isinstance(value, complex) else \
        "bool" if isinstance(value, bool) else "real"


def _constant_operands(ir: IR, node: Node):
    """The value of a function of constants (None where an operand is not a constant,
    or where folding fails: the builder reported the constants it folds)."""
    if node.op != Op.FN or not all(ir.node(a).op == Op.CONST for a in node.args):
        return None
    try:
        return (fold(FUNCTIONS[node.arg], [ir.node(a).arg for a in node.args], node.loc),)
    except RecError:
        return None


def _folded(ir: IR, node: Node, found) -> int:
    return add_node(ir, node, Op.CONST, (), (), (), const_dtype(found[0]), found[0])


# ---- dead values
def _unread(ir: IR, node: Node):
    kept = node.op in LEAVES or node.op in DEFINITIONS
    return None if kept or ir.graph.out_degree(node.id) else True


# ---- re-association: the state-free terms of a sum together (hoisted as one)
def _reads_state(ir: IR, i: int) -> bool:
    return any(ir.node(a).op == Op.STATE for a in nx.ancestors(ir.graph, i) | {i})


def _regroupable(ir: IR, node: Node):
    """(free, inner free, inner stateful, inner on the left) for free + (p + q) where
    p reads no state and q does, else None."""
    if node.op != Op.FN or node.arg != "add":
        return None
    for side, other in ((0, 1), (1, 0)):
        inner, free = ir.node(node.args[side]), node.args[other]
        if inner.op != Op.FN or inner.arg != "add" or ir.graph.out_degree(inner.id) != 1 \
                or _reads_state(ir, free):
            continue
        states = [_reads_state(ir, a) for a in inner.args]
        if states.count(True) == 1:
            p, q = (inner.args[1], inner.args[0]) if states[0] else inner.args
            return free, p, q, side == 0
    return None


def _regrouped(ir: IR, node: Node, found) -> int:
    free, p, q, inner_left = found
    pair = (p, free) if inner_left else (free, p)
    free_sum = add_fn(ir, node, "add", pair)
    return add_fn(ir, node, "add", (free_sum, q), node.axes, node.sizes)


# ---- a sum of a sum: one sum (one einsum) per term, not a product of every axis
def _split_terms(ir: IR, node: Node):
    """The terms of sum(i: a + b) (or a - b) when each has every summed axis."""
    if node.op != Op.REDUCE or node.arg[0] != "sum":
        return None
    body = ir.node(node.args[0])
    if body.op != Op.FN or body.arg not in ("add", "sub") or \
            ir.graph.out_degree(body.id) != 1:
        return None
    terms = [ir.node(a) for a in body.args]
    if not all(set(node.arg[1]) <= set(t.axes) for t in terms):
        return None
    return body.arg, terms


def _split(ir: IR, node: Node, found) -> int:
    how, terms = found
    reduced = node.arg[1]
    sums = []
    for t in terms:
        keep = [(a, s) for a, s in zip(t.axes, t.sizes) if a not in reduced]
        sums.append(add_node(ir, node, Op.REDUCE, (t.id,), tuple(a for a, _ in keep),
                             tuple(s for _, s in keep), t.dtype, node.arg))
    return add_fn(ir, node, how, tuple(sums), node.axes, node.sizes)


RULES = [
    Rule("fold", _constant_operands, _folded,
         "a function of constants is the constant it computes"),
    Rule("dead", _unread, lambda ir, node, found: None,
         "a value no one reads goes (the operands the builder folded, what rules replaced)"),
    Rule("regroup", _regroupable, _regrouped,
         "a + (b + s) -> (a + b) + s for a, b free of states: W x + b is hoisted as one"),
    Rule("split-sum", _split_terms, _split,
         "sum(i: a + b) -> sum(i: a) + sum(i: b): two einsums, not the [.., i] product"),
]


# ---- the driver
def rewrite(ir: IR, rules: list[Rule] | None = None) -> IR:
    """The IR with the rules applied until none applies (in place; returned)."""
    rules = RULES if rules is None else rules
    while _one_pass(ir, rules):
        pass
    return ir


def _one_pass(ir: IR, rules: list[Rule]) -> bool:
    changed = False
    for i in list(nx.topological_sort(ir.graph)):
        for rule in rules:
            node = ir.node(i)
            found = rule.match(ir, node)
            if found is None:
                continue
            new = rule.rewrite(ir, node, found)
            if config.debug_level() >= 5:
                print(f"# rewrite {rule.name}: {_show(ir, i)} -> "
                      f"{'gone' if new is None else _show(ir, new)}")
            _replace(ir, i, new)
            changed = True
            break
    return changed


def _replace(ir: IR, old: int, new: int | None):
    """The readers of `old` read `new`; `old` goes."""
    for reader in list(ir.graph.successors(old)):
        r = ir.node(reader)
        ir.graph.nodes[reader]["node"] = replace(
            r, args=tuple(new if a == old else a for a in r.args))
        ir.graph.add_edge(new, reader)
    ir.graph.remove_node(old)


def _show(ir: IR, i: int) -> str:
    """A node as the IR listing writes it, with its place in the spec."""
    n = ir.node(i)
    args = ", ".join(f"%{a}" for a in n.args)
    where = ir.source.filename.rsplit("/", 1)[-1]
    return f"%{i} {n.op.name.lower()} {n.arg} ({args}) [{', '.join(n.axes)}] at {where}:{n.loc}"


def add_node(ir: IR, like: Node, op: Op, args, axes, sizes, dtype, arg) -> int:
    """A new node written where `like` is (its location and statement)."""
    i = max(ir.graph.nodes) + 1
    ir.graph.add_node(i, node=Node(i, op, tuple(args), tuple(axes), tuple(sizes), dtype, arg,
                                   like.loc, like.stmt, like.origin))
    for a in args:
        ir.graph.add_edge(a, i)
    return i


def add_fn(ir: IR, like: Node, name: str, args, axes=None, sizes=None) -> int:
    """A new elementwise node; its axes those of its operands in order, unless given."""
    nodes = [ir.node(a) for a in args]
    if axes is None:
        pairs = dict(p for n in nodes for p in zip(n.axes, n.sizes))
        axes, sizes = tuple(pairs), tuple(pairs.values())
    dtype = "complex" if any(n.dtype == "complex" for n in nodes) else "real"
    return add_node(ir, like, Op.FN, args, axes, sizes, dtype, name)
