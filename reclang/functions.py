"""The built-in functions and operators: arity, result type, how to fold constants,
and the PyTorch expression each one becomes. One table, read by the IR builder, the
code generator and the initializer evaluator."""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Fn:
    name: str
    arity: int
    torch: str                    # a format string over the argument expressions
    fold: Callable | None = None  # the same function on Python numbers
    result: str = "same"          # "same" (real or complex as the args), "real", "bool"
    real_only: bool = False       # undefined on complex values


def _m(name):
    """A math function that also takes complex numbers."""
    real, cplx = getattr(math, name, None), getattr(cmath, name)
    return lambda x: cplx(x) if isinstance(x, complex) or (real is None) else real(x)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _pow(a, b):
    """a ** b, except that an integer power past float's range is inf (which the IR
    builder refuses) instead of an exact integer: 10 ** 10 ** 10 would take hours."""
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1 and \
            b * math.log2(abs(a)) > 1024:
        return math.inf
    return a ** b


def _where(c, a, b):
    return a if c else b


FUNCTIONS: dict[str, Fn] = {f.name: f for f in [
    # operators
    Fn("add", 2, "{0} + {1}", lambda a, b: a + b),
    Fn("sub", 2, "{0} - {1}", lambda a, b: a - b),
    Fn("mul", 2, "{0} * {1}", lambda a, b: a * b),
    Fn("div", 2, "{0} / {1}", lambda a, b: a / b),
    Fn("pow", 2, "{0} ** {1}", _pow),
    Fn("neg", 1, "-{0}", lambda a: -a),
    Fn("lt", 2, "{0} < {1}", lambda a, b: a < b, "bool", True),
    Fn("le", 2, "{0} <= {1}", lambda a, b: a <= b, "bool", True),
    Fn("gt", 2, "{0} > {1}", lambda a, b: a > b, "bool", True),
    Fn("ge", 2, "{0} >= {1}", lambda a, b: a >= b, "bool", True),
    Fn("eq", 2, "{0} == {1}", lambda a, b: a == b, "bool"),
    Fn("ne", 2, "{0} != {1}", lambda a, b: a != b, "bool"),
    # elementwise functions
    Fn("exp", 1, "torch.exp({0})", _m("exp")),
    Fn("expm1", 1, "torch.expm1({0})", lambda x: math.expm1(x), real_only=True),
    Fn("log", 1, "torch.log({0})", _m("log")),
    Fn("log1p", 1, "torch.log1p({0})", lambda x: math.log1p(x), real_only=True),
    Fn("sqrt", 1, "torch.sqrt({0})", _m("sqrt")),
    Fn("rsqrt", 1, "torch.rsqrt({0})", lambda x: 1.0 / math.sqrt(x), real_only=True),
    Fn("abs", 1, "torch.abs({0})", abs, "real"),
    Fn("sign", 1, "torch.sign({0})", lambda x: float((x > 0) - (x < 0)), real_only=True),
    Fn("sigmoid", 1, "torch.sigmoid({0})", _sigmoid, real_only=True),
    Fn("logsigmoid", 1, "torch.nn.functional.logsigmoid({0})", lambda x: -_softplus(-x),
       real_only=True),
    Fn("tanh", 1, "torch.tanh({0})", _m("tanh")),
    Fn("relu", 1, "torch.relu({0})", lambda x: max(x, 0.0), real_only=True),
    Fn("silu", 1, "torch.nn.functional.silu({0})", lambda x: x * _sigmoid(x), real_only=True),
    Fn("softplus", 1, "torch.nn.functional.softplus({0})", _softplus, real_only=True),
    Fn("sin", 1, "torch.sin({0})", _m("sin")),
    Fn("cos", 1, "torch.cos({0})", _m("cos")),
    Fn("max", 2, "torch.maximum({0}, {1})", max, real_only=True),
    Fn("min", 2, "torch.minimum({0}, {1})", min, real_only=True),
    Fn("clamp", 3, "torch.clamp({0}, {1}, {2})", lambda x, lo, hi: min(max(x, lo), hi),
       real_only=True),
    Fn("where", 3, "torch.where({0}, {1}, {2})", _where),
    # complex numbers
    Fn("real", 1, "torch.real({0})", lambda x: complex(x).real, "real"),
    Fn("imag", 1, "torch.imag({0})", lambda x: complex(x).imag, "real"),
    Fn("conj", 1, "torch.conj({0})", lambda x: complex(x).conjugate()),
    Fn("angle", 1, "torch.angle({0})", lambda x: cmath.phase(x), "real"),
    Fn("complex", 2, "torch.complex({0}, {1})", lambda a, b: complex(a, b), "complex", True),
]}

BINARY_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow",
              "<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}
OPERATOR_SYMBOLS = {v: k for k, v in BINARY_OPS.items()} | {"neg": "-"}

REDUCTIONS = {"sum": "torch.sum", "max": "torch.amax", "min": "torch.amin",
              "logsumexp": "torch.logsumexp"}

# Only in initializers of params and states: random draws and ranges.
INIT_ONLY = {"uniform": 2, "normal": 2, "arange": 1}

CALLABLE = set(FUNCTIONS) - set(BINARY_OPS.values()) - {"neg"}
