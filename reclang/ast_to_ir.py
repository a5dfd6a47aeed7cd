"""AST to IR: resolves names, indices, sizes and types, checks every rule of the
language, and builds the SSA graph. All problems are collected and raised together.

Scoping. The indices of a statement are the names on its left-hand side plus those
bound by an enclosing `sum(i: ...)`. An index's size comes from the declared shape of
the tensors it subscripts (or from `i: N` on the left); every use must agree.
"""

from __future__ import annotations

import difflib
import math

import networkx as nx

from . import ast, config
from .errors import Collector, Loc, RecError
from .functions import BINARY_OPS, CALLABLE, FUNCTIONS, INIT_ONLY, REDUCTIONS
from .ir import IR, Decl, Node, Op
from .rewrite import clip, fold, rewrite

KEYWORDS = {"cell", "input", "param", "state", "out", "real", "complex"}
RESERVED = KEYWORDS | set(REDUCTIONS) | set(FUNCTIONS) | set(INIT_ONLY)


class _Bad(Exception):
    """Aborts one expression after its problem was recorded."""


# ---- hyperparameters -----------------------------------------------------------------
def _eval_scalar(expr: ast.Expr, hypers: dict, what: str) -> int | float | complex:
    """Evaluates an expression of numbers and hyperparameters."""
    if isinstance(expr, ast.Num):
        return expr.value
    if isinstance(expr, ast.Name):
        if expr.name in hypers:
            return hypers[expr.name]
        raise RecError(f"{what} may only use numbers and hyperparameters; "
                       f"'{expr.name}' is not a hyperparameter", loc=expr.loc)
    if isinstance(expr, ast.Unary):
        return fold(FUNCTIONS["neg"], [_eval_scalar(expr.operand, hypers, what)], expr.loc)
    if isinstance(expr, ast.Binary) and expr.op in BINARY_OPS:
        a, b = (_eval_scalar(e, hypers, what) for e in (expr.left, expr.right))
        return fold(FUNCTIONS[BINARY_OPS[expr.op]], [a, b], expr.loc)
    if isinstance(expr, ast.Call) and expr.fn in CALLABLE:
        args = [_eval_scalar(e, hypers, what) for e in expr.args]
        if len(args) != FUNCTIONS[expr.fn].arity:
            n = FUNCTIONS[expr.fn].arity
            raise RecError(f"{expr.fn}() takes {n} argument{'s' * (n != 1)}, got {len(args)}",
                           loc=expr.loc)
        return fold(FUNCTIONS[expr.fn], args, expr.loc)
    raise RecError(f"{what} must be a number or an expression of hyperparameters",
                   loc=expr.loc)


def resolve_hypers(cell: ast.Cell, overrides: dict) -> dict[str, int | float]:
    """Evaluates the hyperparameters in order, applying load-time overrides."""
    source = cell.source
    known = {h.name for h in cell.hypers}
    unknown = [k for k in overrides if k not in known]
    if unknown:
        names = ", ".join(sorted(known)) or "none"
        raise RecError(f"cell {cell.name} has no hyperparameter {unknown[0]!r} "
                       f"(it has: {names})", source, cell.loc)
    values: dict[str, int | float] = {}
    for h in cell.hypers:
        try:
            default = _eval_scalar(h.default, values, "a default") if h.default else None
        except RecError as err:
            raise RecError(err.diagnostics, source) from None
        if h.name in overrides:
            values[h.name] = _check_override(h, default, overrides[h.name], source)
        elif default is None:
            raise RecError(f"hyperparameter {h.name} has no default: pass {h.name}=... "
                           "when loading", source, h.loc)
        else:
            values[h.name] = default
    return values


def _check_override(h: ast.Hyper, default, value, source):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecError(f"hyperparameter {h.name} must be a number, got "
                       f"{type(value).__name__} {value!r}", source, h.loc)
    if not abs(value) <= config.NUMBER:  # also refuses nan
        raise RecError(f"hyperparameter {h.name} must be finite and at most "
                       f"{config.NUMBER:.3g} in magnitude, got {clip(value)}", source, h.loc)
    if isinstance(default, int) and not isinstance(value, int):
        if float(value).is_integer():
            return int(value)
        raise RecError(f"hyperparameter {h.name} is an integer (default {default}), "
                       f"got {value!r}", source, h.loc)
    return value


# ---- the builder ---------------------------------------------------------------------
class Builder:
    def __init__(self, cell: ast.Cell, hypers: dict):
        self.cell, self.hypers = cell, hypers
        self.errors = Collector(cell.source)
        self.graph = nx.DiGraph()
        self.decls: dict[str, Decl] = {}
        self.leaves: dict[str, int] = {}
        self.defined: dict[str, int] = {}   # let/out name -> definition node
        self.updated: dict[str, int] = {}   # state name -> UPDATE node
        self.stmts: list[int] = []
        self.stmt = -1
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
        node = Node(i, op, tuple(args), tuple(axes), tuple(sizes), dtype, arg, loc, self.stmt)
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
                self.declare(stmt)
        for stmt in self.cell.body:
            if isinstance(stmt, ast.Assign):
                try:
                    self.statement(stmt)
                except _Bad:
                    pass
        self.check_complete()
        self.errors.raise_if_any()
        return IR(self.cell.name, self.cell.source, dict(self.hypers), self.graph,
                  self.decls, self.stmts, self.leaves)

    def _check_new_name(self, name, loc, what) -> bool:
        if name in RESERVED:
            kind = "keyword" if name in KEYWORDS else "built-in function"
            self.errors.error(f"'{name}' is a {kind} and cannot name {_a(what)}", loc)
            return False
        if name in self.hypers and what != "hyperparameter":
            self.errors.error(f"'{name}' is already a hyperparameter", loc)
            return False
        if name in self.decls:
            first = self.decls[name]
            self.errors.error(f"'{name}' is already declared as {_a(first.kind)} "
                              f"at line {first.loc.line}", loc)
            return False
        return True

    def declare(self, stmt):
        kind = {ast.InputDecl: "input", ast.ParamDecl: "param", ast.StateDecl: "state"}[type(stmt)]
        inits = getattr(stmt, "inits", [None] * len(stmt.tensors))
        for t, init in zip(stmt.tensors, inits):
            random = isinstance(init, ast.Init) and init.random
            init = init.value if isinstance(init, ast.Init) else init
            if not self._check_new_name(t.name, t.loc, kind):
                continue
            shape = self._shape(t)
            if kind == "param" and init is None:
                self.errors.error(f"param {t.name} needs an initializer: `= value` or "
                                  "`~ normal(0, 0.02)`", t.loc)
            if kind == "input" and t.dtype == "complex":
                self.errors.error("inputs are real; make a complex value in the cell "
                                  "with complex(re, im)", t.loc)
            decl = Decl(t.name, kind, shape, t.dtype, t.loc, t.dims, init, random)
            self.decls[t.name] = decl
            if init is not None:
                self._check_init(init, decl)
            op = {"input": Op.INPUT, "param": Op.PARAM, "state": Op.STATE}[kind]
            axes = tuple(f"#{k}" for k in range(len(shape)))
            self.leaves[t.name] = self.add(op, (), axes, shape, t.dtype, t.name, t.loc)

    def _shape(self, t: ast.TensorDecl) -> tuple[int, ...]:
        shape = tuple(self._dim_size(d) for d in t.dims)
        if len(shape) > config.INDICES or math.prod(shape) > config.ELEMENTS:
            self.errors.error(f"{t.name} has {_axes(len(shape))} and {math.prod(shape):,} "
                              f"elements; a tensor has at most {config.INDICES} axes and "
                              f"{config.ELEMENTS:,} elements", t.loc)
            return (1,) * min(len(shape), config.INDICES)
        return shape

    def _dim_size(self, dim: ast.Dim) -> int:
        try:
            value = _eval_scalar(dim.size, self.hypers, "a dimension")
        except RecError as err:
            self.errors.error(err.message, err.loc)
            return 1
        if not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())) \
                or value < 1:
            self.errors.error(f"a dimension must be a positive integer, got {value!r}", dim.loc)
            return 1
        return int(value)

    def _check_init(self, expr: ast.Expr, decl: Decl):
        """Initializers use numbers, hyperparameters, params, the declaration's own
        index names, elementwise functions and uniform / normal / arange."""
        indices = {d.index for d in decl.dims if d.index}
        for e in _walk(expr):
            if isinstance(e, ast.Name) and e.name not in self.hypers | dict.fromkeys(indices):
                other = self.decls.get(e.name)
                if other is None or other.kind != "param":
                    what = f"{other.kind} " if other else ""
                    self.errors.error(f"an initializer may use numbers, hyperparameters, "
                                      f"params and its own index names, not {what}"
                                      f"'{e.name}'", e.loc)
            elif isinstance(e, ast.Subscript):
                self.errors.error("an initializer reads whole tensors (they broadcast like "
                                  f"torch); write '{e.name}' without subscripts", e.loc)
            elif isinstance(e, ast.Call) and e.fn not in CALLABLE | set(INIT_ONLY):
                self._unknown_function(e)
            elif isinstance(e, ast.Call):
                n = INIT_ONLY[e.fn] if e.fn in INIT_ONLY else FUNCTIONS[e.fn].arity
                if len(e.args) != n:
                    self.errors.error(f"{e.fn}() takes {n} argument{'s' * (n != 1)}, "
                                      f"got {len(e.args)}", e.loc)
            elif isinstance(e, ast.Reduce):
                self.errors.error("reductions are not allowed in initializers", e.loc)
            elif isinstance(e, ast.Imag) and decl.dtype != "complex":
                self.errors.error(f"{decl.name} is real; declare it `{decl.name}[...]: complex` "
                                  "to give it a complex value", e.loc)

    def _unknown_function(self, e: ast.Call):
        if e.fn in self.decls or e.fn in self.defined:
            self.errors.error(f"'{e.fn}' is a tensor, not a function: index it with "
                              f"{e.fn}[...]", e.loc)
            return
        hint = _suggest(e.fn, CALLABLE | set(REDUCTIONS))
        self.errors.error(f"unknown function '{e.fn}'{hint}", e.loc)

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

    def _target_scope(self, s: ast.Assign) -> dict[str, int]:
        """Checks the left-hand side and returns the sizes of its indices."""
        decl = self.decls.get(s.name)
        if s.kind == "update":
            self._check_update_target(s, decl)
        elif decl is not None and decl.kind == "state":
            self.fail(f"{s.name} is a state: update it with `<-`, not `=`", s.loc)
        elif decl is not None:
            self.fail(f"{s.name} is {_a(decl.kind)}: {decl.kind}s cannot be assigned", s.loc)
        elif s.name in self.defined:
            first = self.node(self.defined[s.name]).loc
            self.fail(f"{s.name} is already defined at line {first.line}; "
                      "each name is assigned once", s.loc)
        elif s.name in self.hypers or s.name in RESERVED:
            self.fail(f"'{s.name}' is a hyperparameter or built-in and cannot be assigned", s.loc)
        names = [i.name for i in s.indices]
        scope: dict[str, int] = {}
        for k, index in enumerate(s.indices):
            if index.name in names[:k]:
                self.fail(f"index {index.name} appears twice on the left", index.loc)
            self._check_index_name(index.name, index.loc)
            size = None
            if index.size is not None:
                size = self._dim_size(ast.Dim(index.size, None, index.loc))
            if s.kind == "update":
                declared = decl.shape[k]
                if size is not None and size != declared:
                    self.fail(f"{index.name} has size {size} but axis {k} of {s.name} "
                              f"has size {declared}", index.loc)
                size = declared
            if size is None:
                size = self._infer_size(index.name, s.value, index.loc)
            scope[index.name] = size
        return scope

    def _check_update_target(self, s, decl):
        if decl is None:
            self.fail(f"{s.name} is not a declared state: declare it with "
                      f"`state {s.name}[...] = 0` to update it with `<-`", s.loc)
        if decl.kind != "state":
            self.fail(f"only states are updated with `<-`; {s.name} is {_a(decl.kind)}", s.loc)
        if s.name in self.updated:
            first = self.node(self.updated[s.name]).loc
            self.fail(f"state {s.name} is updated twice (first at line {first.line}); "
                      "a state has one update per step", s.loc)
        if len(s.indices) != len(decl.shape):
            self.fail(f"{s.name} has {_axes(len(decl.shape))} but {len(s.indices)} "
                      f"{'index is' if len(s.indices) == 1 else 'indices are'} given", s.loc)

    def _check_index_name(self, name, loc):
        if name in self.hypers or name in self.decls or name in self.defined:
            self.fail(f"index {name} has the same name as a hyperparameter or tensor; "
                      "rename the index", loc)

    def _infer_size(self, index: str, expr: ast.Expr, loc: Loc, reduced=False) -> int:
        """The size of an index from the tensors it subscripts in `expr`."""
        found = self._subscript_sizes(index, expr)
        rebound = any(isinstance(e, ast.Reduce) and index in [n.name for n in e.binders]
                      for e in _walk(expr))
        unknown = any(isinstance(e, ast.Subscript) and self._shape_of(e.name) is None and
                      any(isinstance(s, ast.Name) and s.name == index for s in e.indices)
                      for e in _walk(expr))
        if not found and (rebound or unknown):
            return 1  # the rebinding reduction, or the unknown tensor, reports the problem
        if not found:
            used = any(isinstance(e, ast.Name) and e.name == index for e in _walk(expr))
            if reduced and not used:
                message = f"index {index} is reduced but not used in the reduction's body"
            elif used:
                message = (f"cannot tell the size of index {index}: use it as a subscript "
                           f"of a tensor on the right, or give it as `{index}: N`")
            else:
                message = (f"index {index} is not used on the right, so its size is unknown: "
                           f"give it as `{index}: N`")
            self.errors.error(message, loc)
            return 1  # go on, to find the statement's other problems
        size, where, _ = found[0]
        for other, oloc, what in found[1:]:
            if other != size:
                self.fail(f"index {index} ranges over {other} in {what}, but over {size} "
                          f"at line {where.line}, column {where.col}", oloc)
        return size

    def _subscript_sizes(self, index, expr) -> list[tuple[int, Loc, str]]:
        found = []
        if isinstance(expr, ast.Reduce):
            if any(b.name == index for b in expr.binders):
                return found  # rebound inside: a different index
        if isinstance(expr, ast.Subscript):
            shape = self._shape_of(expr.name)
            for k, sub in enumerate(expr.indices):
                if isinstance(sub, ast.Name) and sub.name == index and shape is not None \
                        and k < len(shape):
                    found.append((shape[k], sub.loc, f"{expr.name} (axis {k})"))
        for child in _children(expr):
            found += self._subscript_sizes(index, child)
        return found

    def _shape_of(self, name):
        if name in self.decls:
            return self.decls[name].shape
        if name in self.defined:
            return self.node(self.defined[name]).sizes
        return None

    # ---- expressions
    def expr(self, e: ast.Expr, scope: dict[str, int]) -> int:
        method = getattr(self, "expr_" + type(e).__name__.lower())
        return method(e, scope)

    def const(self, value, loc) -> int:
        if isinstance(value, int) and value.bit_length() > 1023:  # numbers are reals
            try:
                float(value)
            except OverflowError:
                self.fail(f"this constant ({value.bit_length()} bits) is beyond the range "
                          "of a float (about 1.8e308)", loc)
        dtype = "complex" if isinstance(value, complex) else \
            "bool" if isinstance(value, bool) else "real"
        return self.add(Op.CONST, (), (), (), dtype, value, loc)

    def expr_num(self, e, scope):
        return self.const(e.value, e.loc)

    def expr_imag(self, e, scope):
        return self.const(complex(0, e.value), e.loc)

    def expr_name(self, e, scope):
        if e.name in scope:
            return self.add(Op.INDEX, (), (e.name,), (scope[e.name],), "real", e.name, e.loc)
        if e.name in self.hypers:
            return self.const(self.hypers[e.name], e.loc)
        return self.read(ast.Subscript(e.name, (), e.loc), scope)

    def expr_subscript(self, e, scope):
        return self.read(e, scope)

    def read(self, e: ast.Subscript, scope) -> int:
        source = self._resolve(e.name, e.loc, scope)
        src = self.node(source)
        if src.op == Op.LET and not src.axes and self.node(src.args[0]).op == Op.CONST \
                and not e.indices:
            return self.const(self.node(src.args[0]).arg, e.loc)  # a named constant
        if len(e.indices) != len(src.sizes):
            n = len(src.sizes)
            usage = f"write {e.name}[{', '.join('ijklmn'[:n])}]" if n else f"write {e.name}"
            self.fail(f"{e.name} has {n} ax{'is' if n == 1 else 'es'} but "
                      f"{len(e.indices)} {'index is' if len(e.indices) == 1 else 'indices are'} "
                      f"given: {usage}", e.loc)
        subs, axes, sizes = [], [], []
        for k, sub in enumerate(e.indices):
            if isinstance(sub, ast.Name) and sub.name in scope:
                if sub.name in axes:
                    self.fail(f"index {sub.name} appears twice in {e.name}[...]; "
                              "diagonals are not supported", sub.loc)
                if scope[sub.name] != src.sizes[k]:
                    self.fail(f"index {sub.name} ranges over {scope[sub.name]} but axis {k} of "
                              f"{e.name} has size {src.sizes[k]}", sub.loc)
                subs.append(sub.name)
                axes.append(sub.name)
                sizes.append(scope[sub.name])
            else:
                subs.append(self._constant_subscript(sub, e.name, k, src.sizes[k]))
        return self.add(Op.READ, (source,), axes, sizes, src.dtype, tuple(subs), e.loc)

    def _resolve(self, name, loc, scope) -> int:
        """The node a name refers to at this point of the step (SSA)."""
        if name in self.updated:
            return self.updated[name]
        if name in self.defined:
            return self.defined[name]
        if name in self.leaves:
            return self.leaves[name]
        later = [s for s in self.cell.body if isinstance(s, ast.Assign) and s.name == name]
        if later and later[0].kind != "update":
            self.fail(f"{name} is used before it is defined (line {later[0].loc.line})", loc)
        if name in FUNCTIONS or name in REDUCTIONS:
            self.fail(f"{name} is a function: call it as {name}(...)", loc)
        if name in self.decls:  # declared, but its declaration had an error
            raise _Bad
        candidates = set(self.decls) | set(self.defined) | set(self.hypers) | set(scope)
        if len(name) == 1 and name.islower() and name not in candidates:
            self.fail(f"index {name} is neither on the left of '=' nor bound by "
                      f"sum({name}: ...)", loc)
        self.fail(f"unknown name '{name}'{_suggest(name, candidates)}", loc)

    def _constant_subscript(self, sub, name, k, size) -> int:
        try:
            value = _eval_scalar(sub, self.hypers, "a subscript")
        except RecError:
            if isinstance(sub, ast.Name):
                self.fail(f"index {sub.name} is neither on the left of '=' nor bound by "
                          f"sum({sub.name}: ...)", sub.loc)
            self.fail("a subscript must be an index name or a constant integer", sub.loc)
        if not isinstance(value, int) or not 0 <= value < size:
            self.fail(f"subscript {value!r} is out of range for axis {k} of {name} "
                      f"(size {size})", sub.loc)
        return value

    def expr_unary(self, e, scope):
        return self.function("neg", [e.operand], e.loc, scope)

    def expr_binary(self, e, scope):
        return self.function(BINARY_OPS[e.op], [e.left, e.right], e.loc, scope)

    def expr_call(self, e, scope):
        if e.fn in INIT_ONLY:
            self.fail(f"{e.fn}(...) can only appear in the initializer of a param or state",
                      e.loc)
        if e.fn in REDUCTIONS and e.fn not in FUNCTIONS:
            self.fail(f"{e.fn} needs the index it reduces: {e.fn}(i: ...)", e.loc)
        if e.fn not in CALLABLE:
            self._unknown_function(e)
            raise _Bad
        fn = FUNCTIONS[e.fn]
        if len(e.args) != fn.arity:
            self.fail(f"{e.fn}() takes {fn.arity} argument{'s' * (fn.arity != 1)}, "
                      f"got {len(e.args)}", e.loc)
        return self.function(e.fn, list(e.args), e.loc, scope)

    def function(self, name, operands, loc, scope) -> int:
        args = [self.expr(a, scope) for a in operands]
        nodes = [self.node(a) for a in args]
        fn = FUNCTIONS[name]
        dtypes = {n.dtype for n in nodes}
        if fn.real_only and "complex" in dtypes:
            self.fail(f"{name} is not defined for complex values", loc)
        if name == "where" and nodes[0].dtype != "bool":
            self.fail("the first argument of where(...) must be a comparison", operands[0].loc)
        if name != "where" and "bool" in dtypes:
            self.fail("true/false values can only be the condition of where(...)", loc)
        result = fn.result
        if result == "same":
            values = nodes[1:] if name == "where" else nodes
            result = "complex" if any(n.dtype == "complex" for n in values) else "real"
        if all(n.op == Op.CONST for n in nodes):
            return self._fold(fn, [n.arg for n in nodes], loc)
        axes, sizes = _union(nodes)
        return self.add(Op.FN, args, axes, sizes, result, name, loc)

    def _fold(self, fn, values, loc) -> int:
        try:
            value = fold(fn, values, loc)
        except RecError as err:
            self.fail(err.message, loc)
        return self.const(value, loc)

    def expr_reduce(self, e, scope):
        if e.fn not in REDUCTIONS:
            self.fail(f"{e.fn}(i: ...) is not a reduction; use one of "
                      f"{', '.join(REDUCTIONS)}", e.loc)
        inner = dict(scope)
        for b in e.binders:
            if b.name in scope:
                self.fail(f"index {b.name} is reduced here but is already an index of the "
                          "result (on the left, or in an outer reduction)", b.loc)
            self._check_index_name(b.name, b.loc)
            inner[b.name] = self._infer_size(b.name, e.body, b.loc, reduced=True)
        body = self.expr(e.body, inner)
        node = self.node(body)
        reduced = tuple(b.name for b in e.binders)
        if node.dtype == "complex" and e.fn != "sum":
            self.fail(f"{e.fn} is not defined for complex values", e.loc)
        keep = [(a, s) for a, s in zip(node.axes, node.sizes) if a not in reduced]
        return self.add(Op.REDUCE, (body,), [a for a, _ in keep], [s for _, s in keep],
                        node.dtype, (e.fn, reduced), e.loc)

    # ---- whole-cell checks
    def check_complete(self):
        assigned = {s.name for s in self.cell.body if isinstance(s, ast.Assign)}
        for d in self.decls.values():
            # a state whose update has an error was reported there already
            if d.kind == "state" and d.name not in assigned:
                self.errors.error(f"state {d.name} is never updated: add "
                                  f"`{d.name}[...] <- ...`", d.loc)
        if not any(self.node(i).op == Op.OUT for i in self.stmts) and not self.errors.diagnostics:
            self.errors.error("the cell has no output: add `out y[...] = ...`", self.cell.loc)
        if not any(d.kind == "input" for d in self.decls.values()):
            self.errors.error("the cell has no input: declare one with `input x[D]`",
                              self.cell.loc)


def _union(nodes: list[Node]) -> tuple[list[str], list[int]]:
    axes, sizes = [], []
    for n in nodes:
        for a, s in zip(n.axes, n.sizes):
            if a not in axes:
                axes.append(a)
                sizes.append(s)
    return axes, sizes


def _children(e: ast.Expr):
    if isinstance(e, ast.Subscript):
        return e.indices
    if isinstance(e, ast.Call):
        return e.args
    if isinstance(e, ast.Reduce):
        return (e.body,)
    if isinstance(e, ast.Unary):
        return (e.operand,)
    if isinstance(e, ast.Binary):
        return (e.left, e.right)
    return ()


def _walk(e: ast.Expr):
    yield e
    for c in _children(e):
        yield from _walk(c)


def _axes(n: int) -> str:
    return f"{n} axis" if n == 1 else f"{n} axes"


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def build_ir(cell: ast.Cell, overrides: dict | None = None) -> IR:
    """Checks a parsed cell and builds its IR, rewritten by reclang/rewrite.py's rules.
    Raises RecError listing every problem."""
    hypers = resolve_hypers(cell, overrides or {})
    return rewrite(Builder(cell, hypers).build())
