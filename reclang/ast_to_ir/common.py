"""What the parts of the builder share: reserved names, the signal that abandons an
expression, walks of an expression tree, and the wording of messages."""

from __future__ import annotations

import difflib

from ..functions import CONSTANTS, FUNCTIONS, INIT_ONLY, NORMALIZATIONS, REDUCTIONS
from ..ir import Node

KEYWORDS = {"cell", "input", "param", "state", "out", "real", "complex", "for", "in"}
RESERVED = KEYWORDS | set(REDUCTIONS) | set(FUNCTIONS) | set(INIT_ONLY) | set(CONSTANTS) \
    | NORMALIZATIONS | {"lag"}
STAGE = "ast_to_ir"  # how an internal error names this pass


class _Bad(Exception):
    """Aborts one expression after its problem was recorded."""


def _union(nodes: list[Node]) -> tuple[list[str], list[int]]:
    axes, sizes = [], []
    for n in nodes:
        for a, s in zip(n.axes, n.sizes):
            if a not in axes:
                axes.append(a)
                sizes.append(s)
    return axes, sizes


def _axes(n: int) -> str:
    return f"{n} axis" if n == 1 else f"{n} axes"


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
