"""AST to text: the canonical spelling of a cell (comments and layout are not kept).

`parse(format_cell(cell)) == cell` for every cell: the tests check it on the catalogue
and on random expressions.
"""

from __future__ import annotations

from . import ast

# binding strength of each operator (higher binds tighter), as in grammar.lark
PRECEDENCE = {"<": 1, "<=": 1, ">": 1, ">=": 1, "==": 1, "!=": 1,
              "+": 2, "-": 2, "*": 3, "/": 3, "//": 3, "%": 3, "neg": 4, "**": 5}
ATOM = 6


def format_expr(e: ast.Expr) -> str:
    return _expr(e)[0]


def _expr(e) -> tuple[str, int]:
    """The text of an expression and the precedence of its outermost operator."""
    if isinstance(e, ast.Num):
        return repr(e.value), ATOM
    if isinstance(e, ast.Imag):
        return f"{e.value!r}j", ATOM
    if isinstance(e, ast.Name):
        return e.name, ATOM
    if isinstance(e, ast.Subscript):
        return f"{e.name}[{', '.join(map(format_expr, e.indices))}]", ATOM
    if isinstance(e, ast.Call):
        return f"{e.fn}({', '.join(map(format_expr, e.args))})", ATOM
    if isinstance(e, ast.Reduce):
        binders = ", ".join(b.name for b in e.binders)
        return f"{e.fn}({binders}: {format_expr(e.body)})", ATOM
    if isinstance(e, ast.Unary):
        return f"-{_wrap(e.operand, PRECEDENCE['neg'])}", PRECEDENCE["neg"]
    p = PRECEDENCE[e.op]
    if e.op == "**":  # right-associative; its right side is a unary-level factor
        return f"{_wrap(e.left, p + 1)} ** {_wrap(e.right, PRECEDENCE['neg'])}", p
    if p == 1:  # comparisons do not chain
        return f"{_wrap(e.left, p + 1)} {e.op} {_wrap(e.right, p + 1)}", p
    return f"{_wrap(e.left, p)} {e.op} {_wrap(e.right, p + 1)}", p


def _wrap(e, needed: int) -> str:
    text, p = _expr(e)
    return text if p >= needed else f"({text})"


def _tensor(t: ast.TensorDecl) -> str:
    dims = ", ".join(f"{d.index}: {format_expr(d.size)}" if d.index else format_expr(d.size)
                     for d in t.dims)
    return t.name + (f"[{dims}]" if dims else "") + (": complex" if t.dtype == "complex" else "")


def _init(init: ast.Init | None) -> str:
    if init is None:
        return ""
    return f" {'~' if init.random else '='} {format_expr(init.value)}"


def format_stmt(s: ast.Stmt) -> str:
    if isinstance(s, ast.InputDecl):
        return "input " + ", ".join(map(_tensor, s.tensors))
    if isinstance(s, ast.ParamDecl):
        return "param " + ", ".join(_tensor(t) + _init(i) for t, i in zip(s.tensors, s.inits))
    if isinstance(s, ast.StateDecl):
        return "state " + ", ".join(
            _tensor(t) + (f" = {format_expr(i)}" if i is not None else "")
            for t, i in zip(s.tensors, s.inits))
    target = s.name
    if s.indices:
        target += "[" + ", ".join(i.name + (f": {format_expr(i.size)}" if i.size else "")
                                  for i in s.indices) + "]"
    op = "<-" if s.kind == "update" else "="
    prefix = "out " if s.kind == "out" else ""
    return f"{prefix}{target} {op} {format_expr(s.value)}"


def _lines(s: ast.Stmt, indent: str):
    """A statement's lines; a for block's body is indented one level more."""
    if not isinstance(s, ast.For):
        yield indent + format_stmt(s)
        return
    yield f"{indent}for {s.var.name} in {format_expr(s.count)}:"
    for inner in s.body:
        yield from _lines(inner, indent + "    ")


def format_cell(cell: ast.Cell) -> str:
    hypers = ", ".join(h.name + (f" = {format_expr(h.default)}" if h.default else "")
                       for h in cell.hypers)
    lines = [f"cell {cell.name}({hypers}):"] + [line for s in cell.body
                                                for line in _lines(s, "    ")]
    return "\n".join(lines) + "\n"
