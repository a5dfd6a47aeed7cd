"""The IR: a networkx DiGraph of `Node`s in SSA form, plus the declarations.

Every value a step computes is one node; an edge u -> v says v reads u. A state has a
`STATE` leaf (its value from the previous step) and, once the spec assigns it with
`<-`, an `UPDATE` node (its new value); reads after the update see the UPDATE node.

Node attributes (the `Node` dataclass, stored under the graph attribute "node"):
    op      what the node computes (`Op`)
    args    ids of the nodes it reads, in order
    axes    the index names of its result, in layout order (per statement)
    sizes   the size of each axis
    dtype   "real" | "complex" | "bool"
    arg     op-specific: a number (CONST), an index name (INDEX), a function name
            (FN), (kind, reduced axes) (REDUCE), subscripts (READ: per axis of the source
            an index name, an integer, or an `IndexExpr`), a `Lag` (LAG), None (TIME), a
            tensor name (INPUT, PARAM, STATE, LET, UPDATE, OUT)
    loc     where in the spec the value is written
    stmt    the statement it belongs to (index into IR.stmts), -1 for declarations
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto
from math import prod

import networkx as nx

from . import ast
from .errors import Loc, Source


class Op(Enum):
    # leaves: one per declared tensor
    INPUT = auto()   # one time step of an input sequence
    PARAM = auto()   # a learned weight
    STATE = auto()   # a state's value from the previous step
    # values inside one statement
    CONST = auto()   # a number, folded from literals and hyperparameters
    INDEX = auto()   # an index used as a value: 0, 1, ..., size - 1 along its axis
    READ = auto()    # a tensor read with subscripts: relabels axes, picks constants
    FN = auto()      # an elementwise function of its args (add, mul, exp, where, ...)
    REDUCE = auto()  # sum / max / min / logsumexp over some axes
    LAG = auto()     # lag(e, k): the state-free value e, k steps earlier (0 before the start)
    TIME = auto()    # t: the index of the current step, from the start of the sequence
    # definitions: one per statement
    LET = auto()     # name[...] = value
    UPDATE = auto()  # state[...] <- value
    OUT = auto()     # out name[...] = value


LEAVES = (Op.INPUT, Op.PARAM, Op.STATE)
DEFINITIONS = (Op.LET, Op.UPDATE, Op.OUT)


@dataclass(frozen=True)
class IndexExpr:
    """An integer expression of index names in a subscript: `h // G`, `i + 1`, `(i + 1) % N`.

    `op` is one of + - * // % (floor division and floor modulo, as Python's), and each
    operand an index name, an integer or another IndexExpr. A read whose subscript
    falls outside [0, size) is 0.
    """

    op: str
    left: str | int | IndexExpr
    right: str | int | IndexExpr

    def names(self) -> list[str]:
        """The index names it reads, in order of first appearance."""
        found: list[str] = []
        for side in (self.left, self.right):
            for n in side.names() if isinstance(side, IndexExpr) else \
                    [side] if isinstance(side, str) else []:
                if n not in found:
                    found.append(n)
        return found

    def evaluate(self, env: dict):
        """Its value with each index name replaced by env[name]: ints, torch integer
        tensors or sympy integer symbols (// and % are floor operations on all three)."""
        a, b = (evaluate_index(side, env) for side in (self.left, self.right))
        return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
                "//": lambda: a // b, "%": lambda: a % b}[self.op]()

    def __str__(self) -> str:
        return f"({self.left} {self.op} {self.right})"


def evaluate_index(sub: str | int | IndexExpr, env: dict):
    """A subscript's value: env[name] for an index name, the integer, or the expression's."""
    if isinstance(sub, IndexExpr):
        return sub.evaluate(env)
    return env[sub] if isinstance(sub, str) else sub


@dataclass(frozen=True)
class Lag:
    """The arg of a LAG node: the offset (an integer, or the name of an index whose values
    0 .. size - 1 are the offsets, an axis of the result) and the deepest offset."""

    offset: int | str
    depth: int


@dataclass(frozen=True)
class Node:
    id: int
    op: Op
    args: tuple[int, ...]
    axes: tuple[str, ...]
    sizes: tuple[int, ...]
    dtype: str
    arg: object
    loc: Loc
    stmt: int = -1
    origin: str = ""  # the construct a lowering built it for (softmax), for messages

    @property
    def numel(self) -> int:
        return prod(self.sizes)


@dataclass(frozen=True)
class Decl:
    """A declared tensor: an input, param or state."""

    name: str
    kind: str  # "input" | "param" | "state"
    shape: tuple[int, ...]
    dtype: str
    loc: Loc
    dims: tuple[ast.Dim, ...] = ()
    init: ast.Expr | None = None  # params and states
    random: bool = False


@dataclass
class IR:
    name: str
    source: Source
    hypers: dict[str, int | float]
    graph: nx.DiGraph
    decls: dict[str, Decl]
    stmts: list[int] = field(default_factory=list)     # definition nodes in spec order
    leaves: dict[str, int] = field(default_factory=dict)  # declared name -> leaf node

    def node(self, i: int) -> Node:
        return self.graph.nodes[i]["node"]

    def of_kind(self, kind: str) -> list[Decl]:
        return [d for d in self.decls.values() if d.kind == kind]

    @property
    def inputs(self) -> list[Decl]:
        return self.of_kind("input")

    @property
    def params(self) -> list[Decl]:
        return self.of_kind("param")

    @property
    def states(self) -> list[Decl]:
        return self.of_kind("state")

    @property
    def outputs(self) -> list[Node]:
        return [self.node(i) for i in self.stmts if self.node(i).op == Op.OUT]

    def update(self, state: str) -> Node:
        """The statement that updates a state."""
        return next(self.node(i) for i in self.stmts
                    if self.node(i).op == Op.UPDATE and self.node(i).arg == state)

    def spec_line(self, loc: Loc) -> str:
        return self.source.line(loc.line).strip()

    def summary(self) -> str:
        """A short human-readable listing of the graph, one node per line."""
        lines = []
        for i in nx.topological_sort(self.graph):
            n = self.node(i)
            shape = ", ".join(f"{a}={s}" for a, s in zip(n.axes, n.sizes))
            args = ", ".join(f"%{a}" for a in n.args)
            lines.append(f"%{i:<3} {n.op.name:<7} {str(n.arg):<24} ({args}) [{shape}] {n.dtype}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        """The graph in Graphviz dot."""
        lines = [f'digraph "{self.name}" {{', "  rankdir=TB;", "  node [fontname=monospace];"]
        shapes = {Op.INPUT: "invhouse", Op.PARAM: "box", Op.STATE: "doubleoctagon",
                  Op.UPDATE: "doubleoctagon", Op.OUT: "house", Op.LET: "box"}
        for i in sorted(self.graph.nodes):
            n = self.node(i)
            label = f"{n.op.name.lower()} {n.arg}" if n.op != Op.READ else f"read {n.arg}"
            label += f"\\n[{', '.join(n.axes)}]" if n.axes else ""
            label = label.replace('"', "'")
            lines.append(f'  n{i} [label="{label}", shape={shapes.get(n.op, "ellipse")}];')
        for u, v in sorted(self.graph.edges):
            lines.append(f"  n{u} -> n{v};")
        lines.append("}")
        return "\n".join(lines)
