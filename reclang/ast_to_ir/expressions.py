"""Expressions: the right-hand side of a statement, one IR node per AST node, with
its axes, sizes and dtype."""

from __future__ import annotations

from .. import ast
from ..errors import RecError
from ..functions import (BINARY_OPS, CALLABLE, CONSTANTS, FUNCTIONS, INIT_ONLY,
                         NORMALIZATIONS, REDUCTIONS)
from ..ir import IndexExpr, Op
from ..rewrite import fold
from .common import STAGE, _Bad, _suggest, _union
from .hypers import _eval_scalar


class Expressions:
    """The part of the Builder that lowers expressions (see builder.py for its state)."""

    def expr(self, e: ast.Expr, scope: dict[str, int]) -> int:
        method = getattr(self, "expr_" + type(e).__name__.lower(), None)
        if method is None:  # an AST node this pass was not taught: say so at the node
            raise RecError(f"internal error in {STAGE}: no rule lowers a "
                           f"{type(e).__name__} expression", loc=e.loc)
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
        if e.name == "t" and not self._named("t"):
            return self.time_value(e)
        if e.name in CONSTANTS:
            return self.const(CONSTANTS[e.name], e.loc)
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
            if e.name == "t" and not e.indices:  # the step index, meant but shadowed
                usage += " (a tensor named t hides the step index t: rename it to read both)"
            self.fail(f"{e.name} has {n} ax{'is' if n == 1 else 'es'} but "
                      f"{len(e.indices)} {'index is' if len(e.indices) == 1 else 'indices are'} "
                      f"given: {usage}", e.loc)
        subs, axes, sizes = [], [], []
        for k, sub in enumerate(e.indices):
            ix = self.index_expr(sub, scope)
            if isinstance(ix, str) and ix in axes:  # a repeated index: the diagonal
                ix = IndexExpr("+", ix, 0)
            if isinstance(ix, str) and scope[ix] != src.sizes[k]:
                self.fail(f"index {ix} ranges over {scope[ix]} but axis {k} of "
                          f"{e.name} has size {src.sizes[k]}", sub.loc)
            if ix is None:
                ix = self._constant_subscript(sub, e.name, k, src.sizes[k])
            subs.append(ix)
            for name in [ix] if isinstance(ix, str) else \
                    ix.names() if isinstance(ix, IndexExpr) else []:
                if name not in axes:
                    axes.append(name)
                    sizes.append(scope[name])
        return self.add(Op.READ, (source,), axes, sizes, src.dtype, tuple(subs), e.loc)

    def _resolve(self, name, loc, scope) -> int:
        """The node a name refers to at this point of the step (SSA)."""
        if name in self.updated:
            return self.updated[name]
        if name in self.defined:
            return self.defined[name]
        if name in self.leaves:
            return self.leaves[name]
        if name in self.failed:
            raise _Bad
        later = [s for s in self.cell.body if isinstance(s, ast.Assign) and s.name == name]
        if later and later[0].kind != "update":
            self.fail(f"{name} is used before it is defined (line {later[0].loc.line})", loc)
        if name in FUNCTIONS or name in REDUCTIONS or name in NORMALIZATIONS:
            self.fail(f"{name} is a function: call it as {name}(...)", loc)
        if name in self.decls:  # declared, but its declaration had an error
            raise _Bad
        candidates = set(self.decls) | set(self.defined) | set(self.hypers) | set(scope)
        if len(name) == 1 and name.islower() and name not in candidates:
            self.fail(f"index {name} is neither on the left of '=' nor bound by "
                      f"sum({name}: ...)", loc)
        self.fail(f"unknown name '{name}'{_suggest(name, candidates)}", loc)

    def _named(self, name) -> bool:
        """Whether a tensor, let or output of this name exists (it hides a built-in)."""
        return name in self.decls or name in self.defined or name in self.leaves or any(
            isinstance(s, ast.Assign) and s.name == name for s in self.cell.body)

    def _constant_subscript(self, sub, name, k, size) -> int:
        try:
            value = _eval_scalar(sub, self.hypers, "a subscript")
        except RecError:
            if isinstance(sub, ast.Name):
                self.fail(f"index {sub.name} is neither on the left of '=' nor bound by "
                          f"sum({sub.name}: ...)", sub.loc)
            self.fail("a subscript must be an index, a constant integer, or an integer "
                      "expression of indices and constants", sub.loc)
        if not isinstance(value, int) or not 0 <= value < size:
            self.fail(f"subscript {value!r} is out of range for axis {k} of {name} "
                      f"(size {size})", sub.loc)
        return value

    def expr_unary(self, e, scope):
        return self.function("neg", [e.operand], e.loc, scope)

    def expr_binary(self, e, scope):
        return self.function(BINARY_OPS[e.op], [e.left, e.right], e.loc, scope)

    def expr_call(self, e, scope):
        if e.fn == "lag":
            return self.lag(e, scope)
        if e.fn in INIT_ONLY:
            self.fail(f"{e.fn}(...) can only appear in the initializer of a param or state",
                      e.loc)
        if e.fn in REDUCTIONS.keys() - FUNCTIONS.keys() | NORMALIZATIONS:
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
        if e.fn in NORMALIZATIONS:
            return self.softmax(e, scope)
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

    def softmax(self, e, scope):
        """softmax(i: body) = exp(body - m) / sum(i: exp(body - m)), m = max(i: body): the
        stable form, in ops every backend knows. i stays an index of the result."""
        for b in e.binders:
            if b.name not in scope:
                self.fail(f"softmax({b.name}: ...) normalizes along {b.name}, which stays an "
                          f"index of the result: put {b.name} on the left (`y[{b.name}] = "
                          f"softmax({b.name}: ...)`) or bind it in an enclosing reduction",
                          b.loc)
        body = self.expr(e.body, scope)
        node = self.node(body)
        reduced = tuple(b.name for b in e.binders)
        if node.dtype == "complex":
            self.fail("softmax is not defined for complex values", e.loc)
        missing = [a for a in reduced if a not in node.axes]
        if missing:
            self.fail(f"the body of softmax does not depend on {missing[0]}, so it is "
                      f"1/size along it; write that instead", e.loc)
        self.origin = "softmax"  # a refusal at these nodes names the softmax, not a max
        try:
            peak = self._reduced("max", body, reduced, e.loc)
            shifted = self._elementwise("exp", [self._elementwise("sub", [body, peak], e.loc)],
                                        e.loc)
            total = self._reduced("sum", shifted, reduced, e.loc)
            return self._elementwise("div", [shifted, total], e.loc)
        finally:
            self.origin = ""

    def _reduced(self, kind, i, reduced, loc) -> int:
        node = self.node(i)
        keep = [(a, s) for a, s in zip(node.axes, node.sizes) if a not in reduced]
        return self.add(Op.REDUCE, (i,), [a for a, _ in keep], [s for _, s in keep],
                        node.dtype, (kind, reduced), loc)

    def _elementwise(self, name, args, loc) -> int:
        axes, sizes = _union([self.node(a) for a in args])
        return self.add(Op.FN, args, axes, sizes, "real", name, loc)
