"""The Builder: declarations first, then the statements in order (SSA: a name read
refers to its latest definition), then the checks of the whole cell."""

from __future__ import annotations

import math

import networkx as nx

from .. import ast, config
from ..errors import Collector, Loc, at
from ..ir import IR, Decl, Node, Op
from .common import STAGE, _Bad
from .declarations import Declarations
from .expressions import Expressions
from .indices import Indices
from .offsets import Offsets


class Builder(Declarations, Indices, Expressions, Offsets):
    """One cell's IR under construction; the parts it is made of (declarations.py,
    indices.py, expressions.py, offsets.py) read and write the state set up here."""

    def __init__(self, cell: ast.Cell, hypers: dict, errors: Collector | None = None,
                 failed: set[str] = frozenset()):
        self.cell, self.hypers = cell, hypers
        self.errors = errors or Collector(cell.source)  # with the unroller's problems
        self.graph = nx.DiGraph()
        self.decls: dict[str, Decl] = {}
        self.leaves: dict[str, int] = {}
        self.defined: dict[str, int] = {}   # let/out name -> definition node
        self.updated: dict[str, int] = {}   # state name -> UPDATE node
        self.failed: set[str] = set(failed)  # names whose statement had an error
        self.stmts: list[int] = []
        self.stmt = -1
        self.origin = ""  # the construct the nodes being added lower (see Node.origin)
        self.depth: dict[int, int] = {}     # node -> longest path of nodes up to it

    # ---- nodes
    def add(self, op, args, axes, sizes, dtype, arg, loc) -> int:
        if op not in (Op.INPUT, Op.PARAM, Op.STATE):  # declarations are checked in declare
            self._check_space(axes, sizes, loc)
        depth = 1 + max((self.depth[a] for a in args), default=0)
        if depth > config.CHAIN:
            self.fail(f"this expression is {depth} operations deep, counting the lets it "
                      f"reads; at most {config.CHAIN}: the analysis and the generated code "
                      "follow a value through every let", loc)
        i = self.graph.number_of_nodes()
        self.depth[i] = depth
        node = Node(i, op, tuple(args), tuple(axes), tuple(sizes), dtype, arg, loc, self.stmt,
                    self.origin)
        self.graph.add_node(i, node=node)
        for a in args:
            self.graph.add_edge(a, i)
        return i

    def _check_space(self, axes, sizes, loc):
        """An index space the generated code can hold: einsum has 52 letters and the
        kernels index with int32."""
        if len(axes) > config.INDICES:
            self.fail(f"this expression has {len(axes)} indices; a statement has at most "
                      f"{config.INDICES}", loc)
        if math.prod(sizes) > config.ELEMENTS:
            self.fail(f"this expression spans {' x '.join(map(str, sizes))} = "
                      f"{math.prod(sizes):,} elements per step and sequence; at most "
                      f"{config.ELEMENTS:,}", loc)

    def node(self, i) -> Node:
        return self.graph.nodes[i]["node"]

    def fail(self, message: str, loc: Loc):
        self.errors.error(message, loc)
        raise _Bad

    # ---- declarations
    def build(self) -> IR:
        seen = set()
        for h in self.cell.hypers:
            if h.name in seen:
                self.errors.error(f"hyperparameter {h.name} is declared twice", h.loc)
            seen.add(h.name)
            self._check_new_name(h.name, h.loc, "hyperparameter")
        for stmt in self.cell.body:
            if isinstance(stmt, (ast.InputDecl, ast.ParamDecl, ast.StateDecl)):
                with at(stmt, STAGE):
                    self.declare(stmt)
        for stmt in self.cell.body:
            if isinstance(stmt, ast.Assign):
                try:
                    with at(stmt, STAGE, expected=(_Bad,)):
                        self.statement(stmt)
                except _Bad:
                    self.failed.add(stmt.name)  # its readers report nothing more
        self.check_complete()
        self.errors.raise_if_any()
        return IR(self.cell.name, self.cell.source, dict(self.hypers), self.graph,
                  self.decls, self.stmts, self.leaves)

    # ---- statements
    def statement(self, s: ast.Assign):
        self.stmt = len(self.stmts)
        scope = self._target_scope(s)
        value = self.expr(s.value, scope)
        v = self.node(value)
        op = {"let": Op.LET, "update": Op.UPDATE, "out": Op.OUT}[s.kind]
        axes = tuple(i.name for i in s.indices)
        sizes = tuple(scope[a] for a in axes)
        dtype = v.dtype
        if v.dtype == "bool":
            self.fail("a comparison gives true/false; use it inside where(cond, a, b)", s.value.loc)
        if s.kind == "update":
            state = self.decls[s.name]
            if v.dtype == "complex" and state.dtype != "complex":
                self.fail(f"the new value of {s.name} is complex but the state is real; "
                          f"declare it `state {s.name}[...]: complex`", s.value.loc)
            dtype = state.dtype
        node = self.add(op, (value,), axes, sizes, dtype, s.name, s.loc)
        self.stmts.append(node)
        if s.kind == "update":
            self.updated[s.name] = node
        else:
            self.defined[s.name] = node

    # ---- whole-cell checks
    def check_complete(self):
        assigned = {s.name for s in self.cell.body if isinstance(s, ast.Assign)}
        for d in self.decls.values():
            # a state whose update has an error was reported there already
            if d.kind == "state" and d.name not in assigned | self.failed:
                self.errors.error(f"state {d.name} is never updated: add "
                                  f"`{d.name}[...] <- ...`", d.loc)
        if not any(self.node(i).op == Op.OUT for i in self.stmts) and not self.errors.diagnostics:
            self.errors.error("the cell has no output: add `out y[...] = ...`", self.cell.loc)
        if not any(d.kind == "input" for d in self.decls.values()):
            self.errors.error("the cell has no input: declare one with `input x[D]`",
                              self.cell.loc)
