"""Named constants: a number the spec computes (a constant let such as `scale = K ** -0.5`,
an expression such as `N ** -0.5`) is printed once, by its name, with the spec's
expression and line beside it (`scale = 0.125  # K ** -0.5, line 11`: no file name on a
line of code, see tests/test_generated_escaping.py), not as an anonymous
`0.125` wherever it is used. Plain numbers and hyperparameters alone stay inline."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from reclang import ast
from reclang.ast_to_ir.hypers import _eval_scalar
from reclang.errors import RecError
from reclang.functions import BINARY_OPS
from reclang.ir import IR
from reclang.parser import parse
from reclang.printer import format_expr

from .names import py_name


@dataclass(frozen=True)
class Constant:
    key: str       # what makes two uses one variable: the let, or the expression's text
    stem: str      # its Python name (a let's) or the stem of a fresh one
    value: object  # the number
    note: str      # the spec's expression and where it is, for the comment


def spec_constants(ir: IR) -> dict[tuple[int, int], Constant]:
    """(line, col) of each computed constant of the spec -> what it is."""
    return _constants(ir.source.text, ir.source.filename, tuple(sorted(ir.hypers.items())))


@lru_cache(maxsize=64)
def _constants(text: str, filename: str, hypers: tuple) -> dict:
    cell = parse(text, filename)
    values, lets, found = dict(hypers), {}, {}
    for stmt in cell.body:
        if not isinstance(stmt, ast.Assign):
            continue
        for e in _maximal(stmt.value, values, lets):
            found[e.loc.line, e.loc.col] = _describe(e, values, lets)
        if stmt.kind == "let" and not stmt.indices and _value(stmt.value, values) is not None:
            values[stmt.name] = _value(stmt.value, values)
            lets[stmt.name] = Constant(stmt.name, py_name(stmt.name), values[stmt.name],
                                       f"{format_expr(stmt.value)}, line {stmt.loc.line}")
    return found


def _value(e: ast.Expr, values: dict):
    """The number an expression of numbers, hyperparameters and constant lets is, or None."""
    try:
        return _eval_scalar(e, values, "a constant")
    except RecError:
        return None


def _maximal(e: ast.Expr, values: dict, lets: dict):
    """The largest constant subexpressions that are more than a number or a hyperparameter."""
    if _value(e, values) is not None:
        plain = isinstance(e, ast.Num) or (isinstance(e, ast.Name) and e.name not in lets) or (
            isinstance(e, ast.Unary) and isinstance(e.operand, ast.Num))
        if not plain:
            yield e
        return
    for child in ast.children(e):
        yield from _maximal(child, values, lets)


def _describe(e: ast.Expr, values: dict, lets: dict) -> Constant:
    if isinstance(e, ast.Name):
        return lets[e.name]
    text = format_expr(e)
    names = [x.name for x in _leaves(e) if isinstance(x, ast.Name)]
    stem = "_" + _operation(e) + (f"_{py_name(names[0])}" if names else "")
    return Constant(text, stem, _value(e, values), f"{text}, line {e.loc.line}")


def _operation(e: ast.Expr) -> str:
    if isinstance(e, ast.Binary):
        return BINARY_OPS[e.op]
    return e.fn if isinstance(e, ast.Call) else "neg"


def _leaves(e: ast.Expr):
    children = ast.children(e)
    if not children:
        yield e
    for c in children:
        yield from _leaves(c)
