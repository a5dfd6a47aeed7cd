"""Offsets in time and in index space: `lag(e, k)`, the step index `t`, and integer
expressions of indices in subscripts (`k[h // G, i]`, `x[i + 1]`)."""

from __future__ import annotations

import networkx as nx

from .. import ast, config
from ..errors import RecError
from ..ir import IndexExpr, Lag, Op
from .hypers import _eval_scalar

INDEX_OPS = {"+", "-", "*", "//", "%"}


class Offsets:
    """The part of the Builder that lowers lag, t and index expressions (see builder.py)."""

    # ---- t
    def time_value(self, e: ast.Name) -> int:
        """`t` where no index, tensor or hyperparameter has that name: the step index."""
        return self.add(Op.TIME, (), (), (), "real", None, e.loc)

    # ---- lag(e, k)
    def lag(self, e: ast.Call, scope: dict[str, int]) -> int:
        if len(e.args) != 2:
            self.fail(f"lag() takes 2 arguments, the value and how many steps back, "
                      f"got {len(e.args)}", e.loc)
        value, steps = e.args
        offset, depth = self._lag_offset(steps, scope)
        if isinstance(offset, str) and _mentions(value, offset):
            self.fail(f"the offset index {offset} of lag(...) cannot also subscript the "
                      "lagged value", steps.loc)
        inner = {k: v for k, v in scope.items() if k != offset}
        arg = self.expr(value, inner)
        self._check_state_free(arg, value)
        node = self.node(arg)
        axes, sizes = list(node.axes), list(node.sizes)
        if isinstance(offset, str):
            axes.append(offset)
            sizes.append(scope[offset])
        return self.add(Op.LAG, (arg,), axes, sizes, node.dtype, Lag(offset, depth), e.loc)

    def _lag_offset(self, steps: ast.Expr, scope) -> tuple[int | str, int]:
        if isinstance(steps, ast.Name) and steps.name in scope:
            return steps.name, scope[steps.name] - 1
        try:
            k = _eval_scalar(steps, self.hypers, "the steps of lag(...)")
        except RecError:
            self.fail("the steps of lag(e, k) must be a constant integer, a hyperparameter, "
                      "or an index bound by sum(...) (its values are the offsets)", steps.loc)
        if not isinstance(k, int) or k < 0:
            self.fail(f"lag(e, k) looks k >= 0 steps back (an integer); got {k!r}", steps.loc)
        if k > config.LAG:
            self.fail(f"lag(e, {k}) looks back more than {config.LAG} steps", steps.loc)
        return k, k

    def _check_state_free(self, arg: int, value: ast.Expr):
        for i in nx.ancestors(self.graph, arg) | {arg}:
            n = self.node(i)
            if n.op in (Op.STATE, Op.UPDATE):
                self.fail(f"lag(...) needs a value that depends on no state; this one reads "
                          f"state {n.arg}: keep earlier values of a state in a state of "
                          "its own", value.loc)

    # ---- index expressions in subscripts
    def index_expr(self, sub: ast.Expr, scope) -> str | int | IndexExpr | None:
        """An integer expression of indices in scope, or None if `sub` reads no index."""
        if isinstance(sub, ast.Name) and sub.name in scope:
            return sub.name
        if not any(isinstance(x, ast.Name) and x.name in scope for x in ast.walk(sub)):
            return None
        if isinstance(sub, ast.Unary):
            inner = self.index_expr(sub.operand, scope)
            return inner if sub.op == "+" else IndexExpr("-", 0, inner)
        if not isinstance(sub, ast.Binary) or sub.op not in INDEX_OPS:
            self.fail("a subscript is an index, a constant, or an integer expression of "
                      "indices and constants with + - * // %", sub.loc)
        left, right = (self.index_expr(x, scope) for x in (sub.left, sub.right))
        left = self._index_constant(sub.left) if left is None else left
        right = self._index_constant(sub.right) if right is None else right
        if sub.op == "*" and not (isinstance(left, int) or isinstance(right, int)):
            self.fail("in a subscript, an index may only be multiplied by a constant", sub.loc)
        if sub.op in ("//", "%") and not (isinstance(right, int) and right > 0):
            self.fail(f"in a subscript, {sub.op} needs a positive constant on its right",
                      sub.right.loc)
        return IndexExpr(sub.op, left, right)

    def _index_constant(self, sub: ast.Expr) -> int:
        try:
            value = _eval_scalar(sub, self.hypers, "a subscript")
        except RecError:
            self.fail("a subscript is an index, a constant, or an integer expression of "
                      "indices and constants with + - * // %", sub.loc)
        if not isinstance(value, int):
            self.fail(f"a subscript's constants are integers; got {value!r}", sub.loc)
        return value


def _mentions(e: ast.Expr, name: str) -> bool:
    return any(isinstance(x, ast.Name) and x.name == name for x in ast.walk(e))
