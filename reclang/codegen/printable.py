"""What a Triton kernel (and the C++ loop, which borrows its spellings) can print: every
sympy function of a step with a Triton spelling and a derivative of each (the verdicts of
the kernel backends, backends/base.py's protocol, and newton's Triton path ask it)."""

from __future__ import annotations

import sympy

from reclang.analysis.lanes import SCALAR
from reclang.functions import Quotient
from reclang.ir import Op

from .fused_loop import TritonPrinter


def triton_refusal(plan, exprs, kernel: str) -> str:
    """Why `kernel` cannot print the sympy expressions `exprs` and their first
    derivatives ("" when it can), at the spec function that brings the first function
    without a Triton spelling (codegen/fused_loop.py TritonPrinter) or derivative."""
    bad = {type(e) for x in exprs for e in sympy.preorder_traversal(x)
           if isinstance(e, sympy.Function) and not _printable(type(e))}
    if not bad:
        return ""
    x = sympy.Symbol("x", real=True)
    functions = (plan.ir.node(i) for i in plan.ir.graph.nodes)
    for node in sorted((n for n in functions if n.op == Op.FN and n.arg in SCALAR),
                       key=lambda n: (n.loc.line, n.loc.col)):
        image = SCALAR[node.arg](*[x] * len(node.args))
        if any(isinstance(e, tuple(bad)) for e in sympy.preorder_traversal(image)):
            return (f"{plan.file}: cannot print {node.arg} in {kernel} (no Triton spelling "
                    f"or derivative), at {plan.file}:{node.loc}")
    names = ", ".join(sorted(f.__name__ for f in bad))
    return f"{plan.file}: cannot print {names} in {kernel} (no Triton spelling or " \
        f"derivative), in {plan.file}:{plan.ir.node(plan.ir.stmts[0]).loc}"


def _printable(func) -> bool:
    """A Triton spelling for the function and for every function of its derivative."""
    if func in (sympy.Piecewise, Quotient):
        return True  # pieces and a division's operands are checked themselves
    if not TritonPrinter.spells(func):
        return False
    row = getattr(func, "row", None)  # a built-in kept by name: its arity (clamp: 3)
    xs = sympy.symbols(f"x0:{row.arity if row else 1}", real=True)
    try:
        derivatives = [sympy.diff(func(*xs), x) for x in xs]
    except (TypeError, ValueError):  # more than one argument: no gate of the lane form
        return False
    return all(not d.has(sympy.Derivative, sympy.Subs) and all(
        TritonPrinter.spells(type(e)) for e in sympy.preorder_traversal(d)
        if isinstance(e, sympy.Function) and not isinstance(e, sympy.Piecewise))
        for d in derivatives)
