"""Hoisting offsets out of the recurrence: every `lag(e, k)`, every `t` and every read
with an integer expression in its subscripts (`x[i + 1]`, `k[h // G, i]`) of a value
that depends on no state becomes a *derived leaf* of the IR that the analysis and the
backends see: a derived input (time-varying, [B, T, ...]) or, for a gather of params
alone, a derived param. The plan of the recurrence is the same as if the user passed
those values in, so every backend runs the cell unchanged.

The prologue (reclang/codegen/prologue.py) computes the derived leaves from the real
inputs and params over the whole sequence, from the original IR; the module
(reclang/module.py) runs it before the backend. What it carries between calls is part
of the module's `state`:

    lag_<name>   [B, K, *dims]  the last K values of a lagged expression (K its deepest
                                offset; <name> the first tensor it reads, numbered 2, 3,
                                ... when several lagged expressions read the same one)
    t            [B]            the number of steps before this call (with `t`)

A read of a state (or of a value computed from one) with an index expression stays in
the IR: the sequential loop gathers it, the analysis refuses it for the other backends.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import networkx as nx

from .ir import IR, Decl, IndexExpr, Node, Op

TIME_STATE = "t"


@dataclass(frozen=True)
class Derived:
    """A derived leaf: its name in the hoisted IR, the node it stands for in the
    original IR, and whether it is an input (time-varying) or a param."""

    name: str
    node: int
    kind: str  # "input" | "param"


@dataclass(frozen=True)
class History:
    """The carried history of one lagged expression (its nodes in the original IR)."""

    name: str
    nodes: tuple[int, ...]
    depth: int
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Prologue:
    derived: tuple[Derived, ...]
    histories: tuple[History, ...]
    time: bool  # whether the cell reads t: the counter state TIME_STATE

    def carried(self) -> list[tuple[str, tuple[int, ...], str]]:
        """The states the prologue carries between calls: (name, dims, dtype)."""
        found = [(h.name, (h.depth, *h.shape), h.dtype) for h in self.histories]
        return found + ([(TIME_STATE, (), "real")] if self.time else [])


def hoist(ir: IR) -> tuple[IR, Prologue | None]:
    """The IR with its offsets replaced by derived leaves, and the prologue computing
    them (None, and the IR itself, when the cell has none)."""
    free = _state_free(ir)
    offsets = {_window_sum(ir, i, free) for i in ir.graph if i in free and _offset(ir.node(i))}
    targets = [i for i in nx.topological_sort(ir.graph) if i in offsets]
    if not targets:
        return ir, None
    out = copy.copy(ir)
    out.graph, out.decls, out.leaves = ir.graph.copy(), dict(ir.decls), dict(ir.leaves)
    shared: dict[int, Derived] = {}  # equal values (`t` twice) share one leaf
    derived, taken, classes = [], _spec_names(ir), _classes(ir)
    for i in targets:
        key = classes[i]
        if key in shared:
            _read_leaf(ir, out, i, out.leaves[shared[key].name])
            continue
        shared[key] = _replace(ir, out, i, _unique(_derived_name(ir, i), taken))
        derived.append(shared[key])
    _prune(out, {d.name for d in derived})
    derived = tuple(d for d in derived if d.name in out.leaves)
    time = any(ir.node(i).op == Op.TIME for i in ir.graph)
    return out, Prologue(derived, _histories(ir, classes), time)


def _offset(node: Node) -> bool:
    return node.op in (Op.LAG, Op.TIME) or node.op == Op.READ and any(
        isinstance(s, IndexExpr) for s in node.arg)


def _window_sum(ir: IR, i: int, free: set[int]) -> int:
    """For a window of lags (`lag(x[d], w)`, w bound by a sum), the sum that binds w
    when it reads no state: hoisted whole, the backends get the convolution [B, T, ...]
    rather than its W shifted values. Else node i itself."""
    node = ir.node(i)
    if node.op != Op.LAG or not isinstance(node.arg.offset, str):
        return i
    w, frontier = node.arg.offset, [i]
    while frontier:
        for j in ir.graph.successors(frontier.pop()):
            reader = ir.node(j)
            if reader.op == Op.REDUCE and w in reader.arg[1]:
                return j if j in free else i
            if w in reader.axes:
                frontier.append(j)
    return i


def _state_free(ir: IR) -> set[int]:
    reads_state: set[int] = set()
    for i in nx.topological_sort(ir.graph):
        node = ir.node(i)
        if node.op in (Op.STATE, Op.UPDATE) or any(a in reads_state for a in node.args):
            reads_state.add(i)
    return set(ir.graph) - reads_state


def _derived_name(ir: IR, i: int) -> str:
    """A name that reads like what it stands for, in the plan and the generated code:
    `t`, `lag2_g` (lag(g[d], 2)), `window_x` (a sum over lag(x[d], w)), `x_at` (x read
    at computed subscripts)."""
    node = ir.node(i)
    first = _first_tensor(ir, i) or "value"
    if node.op == Op.TIME:
        return "t"
    if node.op == Op.REDUCE:
        lag = next(n for n in nx.ancestors(ir.graph, i) if ir.node(n).op == Op.LAG)
        return f"window_{_first_tensor(ir, lag) or 'value'}"
    if node.op == Op.LAG:
        offset = node.arg.offset
        return f"lag{offset}_{first}" if isinstance(offset, int) else f"lags_{first}"
    return f"{first}_at"


def _spec_names(ir: IR) -> set[str]:
    """Every name the spec uses (t only where it is not the step index)."""
    names = set(ir.decls) | set(ir.hypers) | {str(ir.node(i).arg) for i in ir.stmts}
    return names | {a for i in ir.graph for a in ir.node(i).axes}


def _unique(stem: str, taken: set[str]) -> str:
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}"
    taken.add(name)
    return name


def _first_tensor(ir: IR, i: int) -> str | None:
    node = ir.node(i)
    if node.op == Op.READ:
        return str(ir.node(node.args[0]).arg)
    return next(filter(None, (_first_tensor(ir, a) for a in node.args)), None)


def _replace(ir: IR, out: IR, i: int, name: str) -> Derived:
    """Node i becomes a READ of a new leaf holding its value (same id, so its readers
    are unchanged)."""
    node = ir.node(i)
    kind = "input" if _time_varying(ir, i) else "param"
    leaf = max(out.graph.nodes) + 1
    axes = tuple(f"#{k}" for k in range(len(node.axes)))
    op = Op.INPUT if kind == "input" else Op.PARAM
    out.graph.add_node(leaf, node=Node(leaf, op, (), axes, node.sizes, node.dtype, name,
                                       node.loc))
    _read_leaf(ir, out, i, leaf)
    out.decls[name] = Decl(name, kind, node.sizes, node.dtype, node.loc)
    out.leaves[name] = leaf
    return Derived(name, i, kind)


def _read_leaf(ir: IR, out: IR, i: int, leaf: int):
    node = ir.node(i)
    out.graph.remove_edges_from(list(out.graph.in_edges(i)))
    out.graph.add_edge(leaf, i)
    out.graph.nodes[i]["node"] = Node(i, Op.READ, (leaf,), node.axes, node.sizes, node.dtype,
                                      node.axes, node.loc, node.stmt)


def _time_varying(ir: IR, i: int) -> bool:
    return any(ir.node(a).op in (Op.INPUT, Op.TIME, Op.LAG)
               for a in nx.ancestors(ir.graph, i) | {i})


def _prune(out: IR, derived: set[str]):
    """Drops what no statement reads any more (the insides of hoisted values), and the
    derived leaves nothing reads (those inside another hoisted value)."""
    keep, stack = set(out.stmts), list(out.stmts)  # what some statement reads: one walk
    while stack:
        for a in out.graph.predecessors(stack.pop()):
            if a not in keep:
                keep.add(a)
                stack.append(a)
    keep |= {out.leaves[d] for d in out.decls if d not in derived}
    out.graph.remove_nodes_from([i for i in list(out.graph) if i not in keep])
    for name in [n for n, i in out.leaves.items() if i not in out.graph]:
        del out.leaves[name], out.decls[name]


def _histories(ir: IR, classes: dict[int, int]) -> tuple[History, ...]:
    """One history per lagged expression (equal ones share it: `lag(x[d], 1)` in two
    statements), as deep as its deepest lag; `nodes` holds every node it stands for."""
    depth: dict[int, int] = {}
    nodes: dict[int, list[int]] = {}
    for i in sorted(ir.graph):
        node = ir.node(i)
        if node.op == Op.LAG:
            key = classes[node.args[0]]
            depth[key] = max(depth.get(key, 0), node.arg.depth)
            nodes.setdefault(key, []).append(node.args[0])
    names = set(ir.decls) | {TIME_STATE}
    found = []
    for key, k in depth.items():
        e = nodes[key][0]
        name = _unique(f"lag_{_first_tensor(ir, e) or 'value'}", names)
        node = ir.node(e)
        found.append(History(name, tuple(nodes[key]), k, node.sizes, node.dtype))
    return tuple(found)


def _classes(ir: IR) -> dict[int, int]:
    """Each node's class: equal for two nodes that compute the same thing (one pass in
    topological order, so a value read many times is not walked many times). Axes count
    by position, not name: x[h, i] and x[h, j] are one value, and `lag(x[h, i], w)` and
    `lag(x[h, j], 1)` share one history."""
    seen: dict[tuple, int] = {}
    found: dict[int, int] = {}
    for i in nx.topological_sort(ir.graph):
        node = ir.node(i)
        key = (node.op, str(node.arg)) if node.op in (Op.INPUT, Op.PARAM) else (
            node.op, _positional_arg(node), node.sizes,
            tuple((found[a], _positions(node, ir.node(a).axes)) for a in node.args))
        found[i] = seen.setdefault(key, len(seen))
    return found


def _positions(node: Node, names) -> tuple:
    """Names of axes as their places in `node`: its own axes, then the ones it reduces.
    A name that is neither stays a name (a finer class), an integer subscript itself."""
    bound = node.arg[1] if node.op == Op.REDUCE else ()
    return tuple(("axis", node.axes.index(a)) if a in node.axes else
                 ("reduced", bound.index(a)) if a in bound else a for a in names)


def _positional_arg(node: Node):
    if node.op == Op.READ:  # subscripts: a READ's arg says how its source's axes map
        if any(isinstance(s, IndexExpr) for s in node.arg):
            return str(node.arg), node.axes
        return _positions(node, node.arg), len(node.axes)
    if node.op == Op.REDUCE:
        return node.arg[0], len(node.arg[1]), len(node.axes)
    if node.op == Op.LAG and isinstance(node.arg.offset, str):
        return "window", _positions(node, (node.arg.offset,)), node.arg.depth
    if node.op == Op.INDEX:
        return "index", _positions(node, (node.arg,))
    return str(node.arg), _positions(node, node.axes)
