"""Hyperparameters and constants: the defaults and load-time overrides of the
hyperparameters, and constant expressions evaluated (folded by reclang/rewrite.py's
`fold`)."""

from __future__ import annotations

from .. import ast, config
from ..errors import RecError
from ..functions import BINARY_OPS, CALLABLE, CONSTANTS, FUNCTIONS
from ..rewrite import clip, fold


def _eval_scalar(expr: ast.Expr, hypers: dict, what: str) -> int | float | complex:
    """Evaluates an expression of numbers and hyperparameters."""
    if isinstance(expr, ast.Num):
        return expr.value
    if isinstance(expr, ast.Name):
        if expr.name in hypers:
            return hypers[expr.name]
        if expr.name in CONSTANTS:
            return CONSTANTS[expr.name]
        if expr.name == "t":
            raise RecError(f"{what} must be known when the cell is loaded, so it cannot use "
                           "t, the index of the step (it varies along the sequence)",
                           loc=expr.loc)
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
