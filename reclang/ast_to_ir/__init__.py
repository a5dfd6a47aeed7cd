"""AST to IR: resolves names, indices, sizes and types, checks every rule of the
language, and builds the SSA graph. All problems are collected and raised together.

Scoping. The indices of a statement are the names on its left-hand side plus those
bound by an enclosing `sum(i: ...)`. An index's size comes from the declared shape of
the tensors it subscripts (or from `i: N` on the left); every use must agree.

The stages, one module each:
    unroll.py        for blocks, unrolled into plain statements
    hypers.py        hyperparameters (defaults, load-time overrides), constant expressions
    declarations.py  inputs, params, states: names, shapes, initializers
    indices.py       a statement's left-hand side and the sizes of its indices
    expressions.py   the right-hand side, node by node
    builder.py       the graph, the statements in order, the whole-cell checks
    common.py        what they share: reserved names, wording
"""

from __future__ import annotations

from .. import ast
from ..errors import Collector, at
from ..ir import IR
from ..rewrite import fold, rewrite
from .builder import Builder
from .common import STAGE
from .hypers import resolve_hypers
from .unroll import unroll

__all__ = ["Builder", "build_ir", "fold", "resolve_hypers"]


def build_ir(cell: ast.Cell, overrides: dict | None = None) -> IR:
    """Checks a parsed cell and builds its IR, rewritten by reclang/rewrite.py's rules.
    Raises RecError listing every problem."""
    with at(cell, STAGE):  # what no statement's own wrapping covers: hypers, whole-cell checks
        hypers = resolve_hypers(cell, overrides or {})
        errors = Collector(cell.source)  # the for blocks' problems, then the statements'
        unrolled, dropped = unroll(cell, hypers, errors)
        return rewrite(Builder(unrolled, hypers, errors, dropped).build())
