"""The built-in functions and operators: one table, one row per built-in, and every
other table a view of it.

A row says how the built-in is checked (arity, result type, real only), folded on
Python numbers, spelled in PyTorch, written in sympy for the analysis (`sympy`, in
elementary terms: sigmoid(x) = 1/(1 + exp(-x))), written in the scalar expressions of
the fused kernels (`kernel`, by default the sympy form; a `named` row is kept there as
a sympy function of its own name, stable to print and to differentiate), spelled in
Triton, and differentiated. A row without a kernel form, a Triton spelling or a
derivative is refused by the kernels that need one (`has_triton`, `derivative`).

Adding a built-in is adding a row (tests/test_functions.py checks every row: the fold,
torch and sympy forms agree, the derivative agrees with autograd, the Triton spelling
exists).
"""

from __future__ import annotations

import cmath
import functools
import math
from dataclasses import dataclass
from typing import Callable

import sympy


@dataclass(frozen=True)
class Fn:
    name: str
    arity: int
    torch: str                    # a format string over the argument expressions
    fold: Callable | None = None  # the same function on Python numbers
    result: str = "same"          # "same" (real or complex as the args), "real", "bool"
    real_only: bool = False       # undefined on complex values
    sympy: Callable | None = None  # on sympy expressions, in elementary terms
    kernel: Callable | None = None  # on the kernels' real scalars (None: `sympy`)
    named: bool = False           # kept by name in the kernels' scalars
    triton: str | None = None     # a format string, for a function applied by name
    derivative: Callable | None = None  # args -> the partial derivatives, in kernel terms
    in_kernels: bool = True       # has a form in the kernels' real scalars
    conditions: int = 0           # its first arguments are true/false values


class Named(sympy.Function):
    """A built-in kept by name in the kernels' scalar expressions: real of real
    arguments (else sympy differentiates |σ(x)| through its real and imaginary parts),
    of numbers its value (a constant folds), and its derivative from its row."""

    row: Fn

    @classmethod
    def eval(cls, *args):
        return cls.row.sympy(*args) if all(a.is_Number for a in args) else None

    def _eval_is_real(self):
        return all(a.is_real for a in self.args)

    def fdiff(self, argindex=1):
        return self.row.derivative(*self.args)[argindex - 1]


class Quotient(sympy.Function):
    """a / b kept a division where sympy would multiply by 1/b: a float divisor whose
    reciprocal rounds (x / 0.1 would become 10.0 * x, which differs from the division
    by an ulp, and so at the integers that floor, %, // and comparisons jump at)."""

    @classmethod
    def eval(cls, a, b):
        if not _inexact_reciprocal(b):
            return a / b
        if a.is_Number:
            return sympy.Float(float(a) / float(b))
        return None

    def _eval_is_real(self):
        return all(a.is_real for a in self.args)

    def fdiff(self, argindex=1):
        a, b = self.args
        return 1 / b if argindex == 1 else -a / b ** 2


def _inexact_reciprocal(b) -> bool:
    """Whether b is a float number whose reciprocal is not exact (not ± a power of 2)."""
    return isinstance(b, sympy.Float) and b != 0 and math.frexp(abs(float(b)))[0] != 0.5


def _kernel_of(name: str) -> Callable:
    """The kernel form of a built-in, looked up when called (rows name each other)."""
    return lambda *args: KERNEL[name](*args)


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


def _sympy_eq(a, b):
    """An equality of indices is a 0/1 value (a sum over it picks one term)."""
    return sympy.KroneckerDelta(a, b) if a.is_integer and b.is_integer else sympy.Eq(a, b)


def _sympy_where(c, a, b):
    return c * a + (1 - c) * b if isinstance(c, sympy.KroneckerDelta) else \
        sympy.Piecewise((a, c), (b, True))


def _step(x):
    """The derivative of max(x, y) in x as the kernels print it: 1/2 at a tie, as
    torch.maximum's gradient."""
    return sympy.Heaviside(x, sympy.Rational(1, 2))


def _indicator(condition):
    """1 where the condition holds, else 0: the gradients of torch.relu (0 at 0) and
    torch.clamp (1 on the closed interval), which the kernels must match at a tie."""
    return sympy.Piecewise((1, condition), (0, True))


def _clamp_derivative(x, lo, hi):
    """torch.clamp's gradients: x on lo ≤ x ≤ hi, lo where x < lo, hi where x > hi."""
    return (_indicator(x >= lo) * _indicator(x <= hi), _indicator(x < lo), _indicator(x > hi))


_ELEMENTARY = {  # sympy forms used by several rows
    "sigmoid": sympy.Lambda(sympy.Symbol("x"), 1 / (1 + sympy.exp(-sympy.Symbol("x")))),
    "softplus": sympy.Lambda(sympy.Symbol("x"), sympy.log(1 + sympy.exp(sympy.Symbol("x")))),
}


def _flat(a, b):
    """The derivatives of a comparison: a true/false value does not vary."""
    return (0, 0)


def _operators() -> list[Fn]:
    def compare(name, sym, fold, sp):
        return Fn(name, 2, f"{{0}} {sym} {{1}}", fold, "bool", True, sympy=sp, derivative=_flat)
    return [
        Fn("add", 2, "{0} + {1}", lambda a, b: a + b, sympy=lambda a, b: a + b,
           derivative=lambda a, b: (1, 1)),
        Fn("sub", 2, "{0} - {1}", lambda a, b: a - b, sympy=lambda a, b: a - b,
           derivative=lambda a, b: (1, -1)),
        Fn("mul", 2, "{0} * {1}", lambda a, b: a * b, sympy=lambda a, b: a * b,
           derivative=lambda a, b: (b, a)),
        Fn("div", 2, "{0} / {1}", lambda a, b: a / b, sympy=Quotient,
           derivative=lambda a, b: (1 / b, -a / b ** 2)),
        # floor division and its remainder, with Python's and torch.remainder's signs (the
        # remainder has the divisor's sign); the kernels write both with floor
        Fn("floordiv", 2, 'torch.div({0}, {1}, rounding_mode="floor")', lambda a, b: a // b,
           real_only=True, sympy=lambda a, b: sympy.floor(Quotient(a, b)),
           kernel=lambda a, b: _kernel_of("floor")(Quotient(a, b)),
           derivative=lambda a, b: (0, 0)),
        Fn("mod", 2, "torch.remainder({0}, {1})", lambda a, b: a % b, real_only=True,
           sympy=sympy.Mod, kernel=lambda a, b: a - b * _kernel_of("floor")(Quotient(a, b)),
           derivative=lambda a, b: (1, -_kernel_of("floor")(Quotient(a, b)))),
        Fn("pow", 2, "{0} ** {1}", _pow, sympy=lambda a, b: a ** b,
           derivative=lambda a, b: (b * a ** (b - 1), a ** b * sympy.log(a))),
        Fn("neg", 1, "-{0}", lambda a: -a, sympy=lambda a: -a, derivative=lambda a: (-1,)),
        compare("lt", "<", lambda a, b: a < b, sympy.Lt),
        compare("le", "<=", lambda a, b: a <= b, sympy.Le),
        compare("gt", ">", lambda a, b: a > b, sympy.Gt),
        compare("ge", ">=", lambda a, b: a >= b, sympy.Ge),
        Fn("eq", 2, "{0} == {1}", lambda a, b: a == b, "bool", sympy=_sympy_eq,
           kernel=sympy.Eq, derivative=_flat),
        Fn("ne", 2, "{0} != {1}", lambda a, b: a != b, "bool", sympy=sympy.Ne,
           derivative=_flat),
    ]


def _elementary() -> list[Fn]:
    return [
        Fn("exp", 1, "torch.exp({0})", _m("exp"), sympy=sympy.exp, triton="tl.exp({0})",
           derivative=lambda x: (sympy.exp(x),)),
        Fn("expm1", 1, "torch.expm1({0})", math.expm1, real_only=True,
           sympy=lambda x: sympy.exp(x) - 1, derivative=lambda x: (sympy.exp(x),)),
        Fn("log", 1, "torch.log({0})", _m("log"), sympy=sympy.log, triton="tl.log({0})",
           derivative=lambda x: (1 / x,)),
        Fn("log1p", 1, "torch.log1p({0})", math.log1p, real_only=True,
           sympy=lambda x: sympy.log(1 + x), derivative=lambda x: (1 / (1 + x),)),
        Fn("sqrt", 1, "torch.sqrt({0})", _m("sqrt"), sympy=sympy.sqrt,
           derivative=lambda x: (1 / (2 * sympy.sqrt(x)),)),
        Fn("rsqrt", 1, "torch.rsqrt({0})", lambda x: 1.0 / math.sqrt(x), real_only=True,
           sympy=lambda x: 1 / sympy.sqrt(x),
           derivative=lambda x: (-x ** sympy.Rational(-3, 2) / 2,)),
        # |x| by name in kernels: sympy would differentiate it into sign(x), a distribution
        Fn("abs", 1, "torch.abs({0})", abs, "real", sympy=sympy.Abs, named=True,
           triton="tl.abs({0})", derivative=lambda x: (_kernel_of("sign")(x),)),
        # floor' = 0, as torch's (sympy leaves it unevaluated)
        Fn("floor", 1, "torch.floor({0})", math.floor, real_only=True, sympy=sympy.floor,
           named=True, triton="tl.floor({0})", derivative=lambda x: (0,)),
        # sign' = 0, as torch's (sympy's 2·δ(x) has no value to print)
        Fn("sign", 1, "torch.sign({0})", lambda x: float((x > 0) - (x < 0)), real_only=True,
           sympy=sympy.sign, named=True, triton="_sign({0})", derivative=lambda x: (0,)),
    ]


def _gates() -> list[Fn]:
    sig = _kernel_of("sigmoid")
    return [
        # σ' = σ (1 − σ), in terms of σ: no exp(-x) of a large negative x, forward or back
        Fn("sigmoid", 1, "torch.sigmoid({0})", _sigmoid, real_only=True,
           sympy=_ELEMENTARY["sigmoid"], named=True, triton="tl.sigmoid({0})",
           derivative=lambda x: (sig(x) * (1 - sig(x)),)),
        Fn("logsigmoid", 1, "torch.nn.functional.logsigmoid({0})", lambda x: -_softplus(-x),
           real_only=True, sympy=lambda x: -_ELEMENTARY["softplus"](-x), named=True,
           triton="_logsigmoid({0})", derivative=lambda x: (sig(-x),)),
        Fn("tanh", 1, "torch.tanh({0})", _m("tanh"), sympy=sympy.tanh, triton="_tanh({0})",
           derivative=lambda x: (1 - sympy.tanh(x) ** 2,)),
        Fn("relu", 1, "torch.relu({0})", lambda x: max(x, 0.0), real_only=True,
           sympy=lambda x: sympy.Max(x, 0), named=True, triton="_relu({0})",
           derivative=lambda x: (_indicator(x > 0),)),
        Fn("silu", 1, "torch.nn.functional.silu({0})", lambda x: x * _sigmoid(x),
           real_only=True, sympy=lambda x: x * _ELEMENTARY["sigmoid"](x),
           kernel=lambda x: x * sig(x),
           derivative=lambda x: (sig(x) * (1 + x * (1 - sig(x))),)),
        Fn("softplus", 1, "torch.nn.functional.softplus({0})", _softplus, real_only=True,
           sympy=_ELEMENTARY["softplus"], named=True, triton="_softplus({0})",
           derivative=lambda x: (sig(x),)),
        Fn("sin", 1, "torch.sin({0})", _m("sin"), sympy=sympy.sin, triton="tl.sin({0})",
           derivative=lambda x: (sympy.cos(x),)),
        Fn("cos", 1, "torch.cos({0})", _m("cos"), sympy=sympy.cos, triton="tl.cos({0})",
           derivative=lambda x: (-sympy.sin(x),)),
    ]


def _gelu(x):
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _smooth() -> list[Fn]:
    """Activations of feed-forward layers (issue 18)."""
    gauss = lambda x: sympy.exp(-x ** 2 / 2) / sympy.sqrt(2 * sympy.pi)  # noqa: E731
    return [
        Fn("erf", 1, "torch.erf({0})", math.erf, real_only=True, sympy=sympy.erf,
           triton="tl.erf({0})",
           derivative=lambda x: (2 / sympy.sqrt(sympy.pi) * sympy.exp(-x ** 2),)),
        # the exact gelu: x Φ(x), Φ the normal distribution function
        Fn("gelu", 1, "torch.nn.functional.gelu({0})", _gelu, real_only=True,
           sympy=lambda x: x * (1 + sympy.erf(x / sympy.sqrt(2))) / 2,
           derivative=lambda x: ((1 + sympy.erf(x / sympy.sqrt(2))) / 2 + x * gauss(x),)),
        # elu with α = 1: x for x > 0, eˣ − 1 else
        Fn("elu", 1, "torch.nn.functional.elu({0})",
           lambda x: x if x > 0 else math.expm1(x), real_only=True,
           sympy=lambda x: sympy.Piecewise((x, x > 0), (sympy.exp(x) - 1, True)),
           derivative=lambda x: (sympy.Piecewise((1, x > 0), (sympy.exp(x), True)),)),
    ]


def _choices() -> list[Fn]:
    return [
        Fn("max", 2, "torch.maximum({0}, {1})", max, real_only=True, sympy=sympy.Max,
           derivative=lambda a, b: (_step(a - b), _step(b - a))),
        Fn("min", 2, "torch.minimum({0}, {1})", min, real_only=True, sympy=sympy.Min,
           derivative=lambda a, b: (_step(b - a), _step(a - b))),
        Fn("clamp", 3, "torch.clamp({0}, {1}, {2})", lambda x, lo, hi: min(max(x, lo), hi),
           real_only=True, sympy=lambda x, lo, hi: sympy.Min(sympy.Max(x, lo), hi),
           named=True, triton="_clamp({0}, {1}, {2})", derivative=_clamp_derivative),
        Fn("where", 3, "torch.where({0}, {1}, {2})", _where, sympy=_sympy_where, conditions=1,
           kernel=lambda c, a, b: sympy.Piecewise((a, c), (b, True)),
           derivative=lambda c, a, b: (0, sympy.Piecewise((1, c), (0, True)),
                                       sympy.Piecewise((0, c), (1, True)))),
    ]


def _complex() -> list[Fn]:
    """Complex numbers: the kernels run real states only, so no kernel form."""
    none = {"in_kernels": False}
    return [
        Fn("real", 1, "torch.real({0})", lambda x: complex(x).real, "real", sympy=sympy.re,
           **none),
        Fn("imag", 1, "torch.imag({0})", lambda x: complex(x).imag, "real", sympy=sympy.im,
           **none),
        Fn("conj", 1, "torch.conj({0})", lambda x: complex(x).conjugate(),
           sympy=sympy.conjugate, **none),
        Fn("angle", 1, "torch.angle({0})", lambda x: cmath.phase(x), "real", sympy=sympy.arg,
           **none),
        Fn("complex", 2, "torch.complex({0}, {1})", lambda a, b: complex(a, b), "complex",
           True, sympy=lambda a, b: a + sympy.I * b, **none),
    ]


FUNCTIONS: dict[str, Fn] = {f.name: f for f in [
    *_operators(), *_elementary(), *_gates(), *_smooth(), *_choices(), *_complex()]}

# ---- views of the table
BINARY_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "//": "floordiv", "%": "mod",
              "**": "pow", "<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}

REDUCTIONS = {"sum": "torch.sum", "max": "torch.amax", "min": "torch.amin",
              "logsumexp": "torch.logsumexp"}

# Normalizations over an index that stays free (`softmax(i: e)`, lowered by the IR
# builder to max, exp, sum and a division).
NORMALIZATIONS = {"softmax"}

# Named numbers: a name that folds to its value wherever a number may be written.
CONSTANTS = {"inf": math.inf, "pi": math.pi}

# Only in initializers of params and states: random draws and ranges.
INIT_ONLY = {"uniform": 2, "normal": 2, "arange": 1}

CALLABLE = set(FUNCTIONS) - set(BINARY_OPS.values()) - {"neg"}

# callable built-in -> itself as a sympy function of its own name: the kernels' form of
# a `named` row, and what the printers' rewrite rules write (sigmoid for 1/(1 + e^-x))
NAMED: dict[str, type] = {f.name: type(f.name.capitalize(), (Named,), {"row": f})
                          for f in FUNCTIONS.values()
                          if f.name in CALLABLE and f.in_kernels and f.derivative}
NAMED["relu"]._eval_is_nonnegative = lambda self: True  # what Max(x, 0) told the analysis

# IR function -> sympy, in elementary terms (the analysis of state-free coefficients),
# except relu and clamp, kept by name: printed as torch.relu and torch.clamp, whose
# gradients at a tie (0 at 0; 1 at a bound) the sequential backend's have, where
# torch.maximum/minimum of Max and Min would take 1/2 (tests/test_ties.py)
BY_NAME = ("relu", "clamp")
SYMPY: dict[str, Callable] = {f.name: NAMED[f.name] if f.name in BY_NAME else f.sympy
                              for f in FUNCTIONS.values()}


def _kernel_form(fn: Fn) -> Callable | None:
    if fn.named:
        return NAMED[fn.name]
    if fn.kernel is not None:
        return fn.kernel
    return fn.sympy if fn.in_kernels else None


# IR function -> its form in the kernels' real scalar expressions (absent: no kernel form)
KERNEL: dict[str, Callable] = {f.name: form for f in FUNCTIONS.values()
                               if (form := _kernel_form(f)) is not None}


def _head(form: Callable, arity: int):
    """The sympy function a form applies by name (None for a compound form)."""
    args = sympy.symbols(f"x0:{arity}")
    expr = form(*args)
    return expr.func if isinstance(expr, sympy.Function) and expr.args == args else None


def _spelled(attr: str, forms) -> dict:
    """sympy function -> the row's spelling in `attr`, for each form applied by name."""
    table = {}
    for fn in FUNCTIONS.values():
        for form in forms(fn):
            head = _head(form, fn.arity) if form is not None else None
            if head is not None and getattr(fn, attr) is not None:
                table[head] = getattr(fn, attr)
    return table


# sympy function -> torch spelling (a format string), for the analysis' forms and the
# kernels' named ones
SYMPY_TORCH = _spelled("torch", lambda fn: (fn.sympy, NAMED.get(fn.name)))
# sympy function -> Triton spelling, for the kernels' forms and the sympy functions that
# simplifications and derivatives turn them into (|x| from sqrt(x²), sign(x))
TRITON = _spelled("triton", lambda fn: (fn.sympy, KERNEL.get(fn.name)))
TRITON[Quotient] = "(({0}) / {1})"  # its divisor is a number
# what the Triton printer prints itself (the arithmetic aside)
PRINTED = (sympy.Max, sympy.Min, sympy.Piecewise, sympy.Heaviside)


def _printable(expr, triton: dict) -> bool:
    return all(f.func in triton or isinstance(f, PRINTED)
               for f in sympy.preorder_traversal(expr)
               if isinstance(f, (sympy.Function, sympy.core.function.Application)))


def real_arguments(fn: Fn) -> list:
    """Real symbols x0, x1, ... to apply a row to; a true/false argument is x0 > 0."""
    xs = sympy.symbols(f"x0:{fn.arity}", real=True)
    return [x > 0 if i < fn.conditions else x for i, x in enumerate(xs)]


def has_triton(name: str) -> bool:
    """Whether a fused kernel can compute the built-in: it has a kernel form whose
    functions, and those of its derivative, all have a Triton spelling."""
    return name in KERNEL and _printed_in_triton(FUNCTIONS[name])


@functools.cache
def _printed_in_triton(fn: Fn) -> bool:
    args = real_arguments(fn)
    parts = [KERNEL[fn.name](*args)] + list(fn.derivative(*args) if fn.derivative else ())
    return all(_printable(sympy.sympify(p), TRITON) for p in parts)


def derivative(name: str) -> Callable | None:
    """The partial derivatives of the built-in (args -> a tuple), or None: then the
    kernels that differentiate it refuse it."""
    return FUNCTIONS[name].derivative
