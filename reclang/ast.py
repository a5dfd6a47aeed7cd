"""The typed syntax tree of a spec: frozen dataclasses, each with its source `Loc`.

Expressions:  Num, Imag, Name, Subscript, Call, Reduce, Unary, Binary.
Statements:   InputDecl, ParamDecl, StateDecl, Assign (kinds let / update / out), For.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Loc, Source


# ---- expressions ---------------------------------------------------------------
@dataclass(frozen=True)
class Num:
    value: int | float
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class Imag:
    value: float  # the number in front of `j`
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class Name:
    name: str
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class Subscript:
    name: str
    indices: tuple[Expr, ...]
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class Call:
    fn: str
    args: tuple[Expr, ...]
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class Reduce:
    """`sum(i, j: body)` (also max, min, logsumexp)."""

    fn: str
    binders: tuple[Name, ...]
    body: Expr
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class Unary:
    op: str  # "-" or "+"
    operand: Expr
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / // % ** < <= > >= == !=
    left: Expr
    right: Expr
    loc: Loc = field(compare=False)


Expr = Num | Imag | Name | Subscript | Call | Reduce | Unary | Binary


# ---- declarations and statements ------------------------------------------------
@dataclass(frozen=True)
class Hyper:
    name: str
    default: Expr | None
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class Dim:
    """One axis of a declared tensor: its size, optionally with an index name
    (`S[h: H, i: K]`) that the initializer may use as a value."""

    size: Expr
    index: str | None
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class TensorDecl:
    name: str
    dims: tuple[Dim, ...]
    dtype: str  # "real" | "complex"
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class InputDecl:
    tensors: tuple[TensorDecl, ...]
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class Init:
    value: Expr
    random: bool  # written `~ normal(...)` rather than `= value`


@dataclass(frozen=True)
class ParamDecl:
    tensors: tuple[TensorDecl, ...]
    inits: tuple[Init | None, ...]  # one per tensor
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class StateDecl:
    tensors: tuple[TensorDecl, ...]
    inits: tuple[Expr | None, ...]
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class TargetIndex:
    name: str
    size: Expr | None  # `A[i: N]` gives the size where nothing else does
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class Assign:
    kind: str  # "let" (name = e), "update" (state <- e), "out" (out name = e)
    name: str
    indices: tuple[TargetIndex, ...]
    value: Expr
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class For:
    """`for r in R:` and an indented block, unrolled R times (ast_to_ir/unroll.py)."""

    var: Name
    count: Expr
    body: tuple[Stmt, ...]
    loc: Loc = field(compare=False)


Stmt = InputDecl | ParamDecl | StateDecl | Assign | For


@dataclass(frozen=True)
class Cell:
    name: str
    hypers: tuple[Hyper, ...]
    body: tuple[Stmt, ...]
    loc: Loc = field(compare=False)
    source: Source = field(compare=False, repr=False, default=Source(""))


def children(e: Expr) -> tuple:
    """The subexpressions an expression reads, in order."""
    if isinstance(e, Subscript):
        return e.indices
    if isinstance(e, Call):
        return e.args
    if isinstance(e, Reduce):
        return (e.body,)
    if isinstance(e, Unary):
        return (e.operand,)
    if isinstance(e, Binary):
        return (e.left, e.right)
    return ()


def walk(e: Expr):
    """The expression and every subexpression, depth first."""
    yield e
    for c in children(e):
        yield from walk(c)
