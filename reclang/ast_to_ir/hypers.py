"""Hyperparameters and constants: the defaults and load-time overrides of the
hyperparameters, and folding a built-in function over constant arguments."""

from __future__ import annotations

import cmath
import math

from .. import ast, config
from ..errors import Loc, RecError
from ..functions import BINARY_OPS, CALLABLE, FUNCTIONS


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


def fold(fn, values: list, loc: Loc):
    """`fn` on constants, as a RecError at `loc` when it fails or leaves float64 (the
    result becomes a literal of the generated code). A power is bounded before it is
    computed: `9 ** 9 ** 9` would take hours and gigabytes."""
    if fn.name == "pow" and _power_too_large(*values):
        raise RecError(f"{_clip(values[0])} ** {_clip(values[1])} is too large: constants "
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
    if not finite:
        raise RecError(f"{fn.name} of constants is not finite in float64 (magnitude above "
                       f"{config.NUMBER:.3g})", loc=loc)
    return value


def _power_too_large(base, exponent) -> bool:
    """Whether |base ** exponent| exceeds config.NUMBER, judged from logarithms."""
    if isinstance(base, complex) or isinstance(exponent, complex) or abs(base) <= 1:
        return False
    return exponent > 0 and exponent * math.log2(abs(base)) > math.log2(config.NUMBER)


def _clip(value, n: int = 20) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


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
                       f"{config.NUMBER:.3g} in magnitude, got {_clip(value)}", source, h.loc)
    if isinstance(default, int) and not isinstance(value, int):
        if float(value).is_integer():
            return int(value)
        raise RecError(f"hyperparameter {h.name} is an integer (default {default}), "
                       f"got {value!r}", source, h.loc)
    return value
