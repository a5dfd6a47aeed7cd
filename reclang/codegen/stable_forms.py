"""The rewrite rules: the analyzer's elementary forms (sigmoid(x) = 1/(1 + exp(-x)),
softplus(x) = log(1 + exp(x))) back as the stable functions, applied to a fixed point
before printing (RECLANG_DEBUG=5 prints each one that fires), so that a large gate does
not overflow an exp. One row (`Rule`) each, in RULES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sympy

from reclang import config
from reclang.functions import NAMED


@dataclass(frozen=True)
class Rule:
    name: str
    match: Callable   # expr -> the rule's argument, or None where it does not apply
    rewrite: Callable  # (expr, argument) -> the expression it becomes
    why: str


def _exp_sum(expr):
    """x for a product of exponentials exp(a)·exp(b) = exp(x), else None."""
    combined = sympy.powsimp(expr)
    return combined.args[0] if isinstance(combined, sympy.exp) else None


def _one_plus_exp(expr):
    """x for 1 + exp(x), else None."""
    if isinstance(expr, sympy.Add) and len(expr.args) == 2 and sympy.Integer(1) in expr.args:
        return _exp_sum(next(a for a in expr.args if a != 1))
    return None


def _one_minus_exp(expr):
    """(x, the other terms) for 1 - exp(x) + ..., else None."""
    if not isinstance(expr, sympy.Add) or sympy.Integer(1) not in expr.args:
        return None
    for term in expr.args:
        x = _exp_sum(sympy.Mul(*term.args[1:])) if term.is_Mul and term.args[0] == -1 else None
        if x is not None:
            return x, [a for a in expr.args if a != term and a != 1]
    return None


def _reciprocal_one_plus_exp(expr):
    return _one_plus_exp(expr.base) if expr.is_Pow and expr.exp == -1 else None


def _log_one_plus_exp(expr):
    return _one_plus_exp(expr.args[0]) if isinstance(expr, sympy.log) else None


def _log_of_exp_product(expr):
    """(a, u) for log(e^a u) with a real (also e^a u + e^a v, factored), else None."""
    if not isinstance(expr, sympy.log):
        return None
    inner = expr.args[0]
    inner = sympy.factor_terms(inner) if isinstance(inner, sympy.Add) else inner
    exps = [f for f in sympy.Mul.make_args(inner) if isinstance(f, sympy.exp)
            and f.args[0].is_real]
    if not inner.is_Mul or not exps:
        return None
    return sympy.Add(*[f.args[0] for f in exps]), inner / sympy.Mul(*exps)


RULES = [
    Rule("log-exp", _log_of_exp_product, lambda e, found: found[0] + sympy.log(found[1]),
         "log(e^a u) -> a + log(u): e^a overflows where a does not"),
    Rule("sigmoid", _reciprocal_one_plus_exp, lambda e, x: NAMED["sigmoid"](-x),
         "1/(1 + e^x) -> sigmoid(-x): no overflow of e^x for a large x"),
    Rule("softplus", _log_one_plus_exp, lambda e, x: NAMED["softplus"](x),
         "log(1 + e^x) -> softplus(x): no overflow of e^x for a large x"),
    Rule("expm1", _one_minus_exp, lambda e, found: sympy.Add(*found[1]) - NAMED["expm1"](found[0]),
         "1 - e^x -> -expm1(x): no cancellation for x near 0"),
]


def rewrite(expr, rules=None):
    """`expr` with the rules applied bottom up, each node until none applies."""
    rules = RULES if rules is None else rules
    memo: dict = {}

    def visit(e):
        if e not in memo:
            memo[e] = _apply(_rebuilt(e, visit), rules, visit)
        return memo[e]
    return visit(expr)


def _rebuilt(e, visit):
    if not isinstance(e, sympy.Basic) or not e.args or isinstance(e, sympy.Indexed):
        return e
    args = tuple(visit(a) for a in e.args)
    return e if args == e.args else e.func(*args)


def _apply(e, rules, visit):
    for rule in rules:
        found = rule.match(e)
        if found is not None:
            new = rule.rewrite(e, found)
            if config.debug_level() >= 5:
                print(f"# rewrite {rule.name}: {e} -> {new}")
            return visit(new)
    return e
