"""Lowering the analyzer's sympy expressions to PyTorch expressions.

The chunk backend's operands (decays, keys, values, queries; reclang/analysis/
operands.py) are sympy expressions over `Indexed` inputs and params and index
symbols. This module prints them as PyTorch code, in the layout of torch_expr: a
value with axes (a, b) has trailing dimensions a, b behind a prefix, [B, T] for
inputs and nothing for params, so that values broadcast from the right.

The analyzer rewrote functions in elementary terms (sigmoid(x) = 1/(1 + exp(-x)),
softplus(x) = log(1 + exp(x))); the rewrite rules (stable_forms.py) turn those
patterns back into the stable PyTorch functions before printing.
"""

from __future__ import annotations

import math

import sympy
from sympy.printing.str import StrPrinter

from reclang.functions import REDUCTIONS, SYMPY_TORCH, Quotient
from reclang.ir import IR

from .constants import spec_constants
from .ir_to_torch import (
    ATOM,
    POWER,
    PRODUCT,
    SUM,
    UNARY,
    Code,
    _letters,
    align,
    constant_line,
    number,
    py_name,
)
from .stable_forms import rewrite

FUNCTIONS = SYMPY_TORCH  # sympy function -> torch spelling: a view of the function table
COMPARISONS = {sympy.StrictLessThan: "<", sympy.LessThan: "<=", sympy.StrictGreaterThan: ">",
               sympy.GreaterThan: ">=", sympy.Unequality: "!=", sympy.Equality: "=="}


class SympyLowering:
    """Prints sympy expressions of one cell as PyTorch expressions with named axes."""

    def __init__(self, ir: IR, sizes: dict[str, int]):
        self.ir = ir
        self.sizes = dict(sizes)  # axis symbol name -> size, for indices used as values
        self.needs: set[str] = set()
        self.named: dict[sympy.Symbol, Code] = {}  # symbols that stand for a variable
        self.names = None  # the function's Names: named constants print by name
        self.definitions: list[str] = []  # ... defined by these lines, first of the function
        self.defined: dict[str, tuple] = {}  # a sub-step vector -> (its var, its shape)

    def lower(self, expr) -> Code:
        """The expression, rewritten by RULES, as PyTorch code."""
        return self._lower(rewrite(sympy.sympify(expr)))

    def _lower(self, expr) -> Code:
        if expr.is_number and not expr.is_Boolean:  # sqrt(2) is a number, not a tensor
            return self.number(expr)
        for cls, method in (
                (sympy.Indexed, self.indexed), (sympy.Symbol, self.symbol),
                (sympy.Add, self.add), (sympy.Mul, self.mul), (sympy.Pow, self.pow),
                (sympy.Sum, self.sum), (sympy.Piecewise, self.piecewise),
                (Quotient, self.quotient),
                (sympy.KroneckerDelta, self.delta), (sympy.Max, self.extreme),
                (sympy.Min, self.extreme), (sympy.core.relational.Relational, self.compare)):
            if isinstance(expr, cls):
                return method(expr)
        if expr is sympy.nan:
            return Code('float("nan")', ATOM, (), True)
        if expr.is_Number or expr in (sympy.pi, sympy.E) or expr == sympy.I:
            return self.number(expr)
        if expr.func in FUNCTIONS:
            args = [self._lower(a) for a in expr.args]
            # (number, tensor) has no backward in torch.remainder; torch.clamp takes
            # tensors or numbers, not both
            clamp = FUNCTIONS[expr.func].startswith("torch.clamp(")
            mixed = any(a.const for a in args) and not all(a.const for a in args)
            for k, a in enumerate(args):
                if a.const and ((expr.func is sympy.Mod and k == 0) or (clamp and mixed)):
                    self.needs.add("dtype")
                    args[k] = Code(f"torch.tensor({a.text}, dtype=_dtype, device=_device)",
                                   ATOM, ())
            axes = _union(args)
            text = FUNCTIONS[expr.func].format(*(align(a, axes).text for a in args))
            return Code(text, ATOM, axes)
        if isinstance(expr, sympy.core.function.AppliedUndef) and str(expr.func) in REDUCTIONS:
            return self.reduction(expr)
        raise NotImplementedError(f"cannot print {expr} ({type(expr).__name__}) as PyTorch")

    # ---- leaves
    def number(self, expr) -> Code:
        if expr == sympy.I:
            return Code("1j", ATOM, (), True)
        if expr.is_Integer:
            value = int(expr)
        elif expr.is_extended_real or expr is sympy.nan:  # oo is not `real` in sympy
            value = float(expr)
        else:
            value = complex(expr)
        named = self.named_constant(value)
        if named is not None:
            return named
        text = number(value)
        return Code(text, UNARY if text.startswith("-") else ATOM, (), True)

    def named_constant(self, value) -> Code | None:
        """A number that is the value of a constant the spec computes (scale = K ** -0.5),
        as its variable: the analyzer's expressions hold the number, not the name."""
        if self.names is None or not isinstance(value, float) or value.is_integer():
            return None
        found = {c.value: c for c in spec_constants(self.ir).values()
                 if isinstance(c.value, float)}
        c = found.get(value) or found.get(-value)
        if c is None:
            return None
        name, new = self.names.constant(("constant", c.key), c.stem)
        if new:
            self.definitions.append(constant_line(name, c))
        return Code(name, ATOM, (), True) if c.value == value else \
            Code(f"-{name}", UNARY, (), True)

    def indexed(self, expr: sympy.Indexed) -> Code:
        name = str(expr.base)
        if name in self.defined:  # [B, T, ...], as operand() made it
            var, shape, prefix = *self.defined[name], [":", ":"]
        else:
            decl = self.ir.decls[name]
            var, shape = py_name(name), decl.shape
            prefix = [":", ":"] if decl.kind == "input" else []
        parts, axes = list(prefix), []
        for sub, size in zip(expr.indices, shape):
            if sub.is_Integer:
                parts.append(str(int(sub)))
            else:
                parts.append(":")
                axes.append(str(sub))
                self.sizes.setdefault(str(sub), size)
        while parts and parts[-1] == ":":
            parts.pop()
        text = var + (f"[{', '.join(parts)}]" if parts else "")
        return Code(text, ATOM, tuple(axes))

    def symbol(self, expr: sympy.Symbol) -> Code:
        if expr in self.named:
            return self.named[expr]
        if expr.is_integer:  # an index used as a value
            self.needs.add("dtype")
            size = self.sizes[str(expr)]
            return Code(f"torch.arange({size}, dtype=_dtype, device=_device)", ATOM, (str(expr),))
        return Code(py_name(str(expr)), ATOM, ())  # a scalar input or param

    # ---- arithmetic
    def add(self, expr: sympy.Add) -> Code:
        terms = [self._lower(a) for a in _ordered(expr.args)]
        axes = _union(terms)
        text = align(terms[0], axes).wrap(SUM)  # aligned too: a term may lack an axis
        for t in terms[1:]:
            part = align(t, axes)
            text += f" - {part.text[1:]}" if part.text.startswith("-") and part.prec >= \
                PRODUCT else f" + {part.wrap(SUM + 1)}"
        return Code(text, SUM, axes, all(t.const for t in terms))

    def mul(self, expr: sympy.Mul) -> Code:
        top, bottom = [], []
        for f in _ordered(expr.args):
            if f.is_Pow and f.exp.is_Number and f.exp < 0:
                bottom.append(sympy.Pow(f.base, -f.exp))
            elif f.is_Rational and not f.is_Integer:
                top.append(sympy.Integer(f.p))
                bottom.append(sympy.Integer(f.q))
            else:
                top.append(f)
        num = self.product([self._lower(f) for f in top if not (f.is_Number and f == 1.0)])
        if not bottom:
            return num
        den = self.product([self._lower(f) for f in bottom])
        axes = _union([num, den])
        return Code(f"{align(num, axes).wrap(PRODUCT)} / {align(den, axes).wrap(PRODUCT + 1)}",
                    PRODUCT, axes)

    def quotient(self, expr) -> Code:
        num, den = (self._lower(a) for a in expr.args)
        return Code(f"{num.wrap(PRODUCT)} / {den.wrap(PRODUCT + 1)}", PRODUCT, num.axes)

    def product(self, codes: list[Code]) -> Code:
        if not codes:
            return Code("1", ATOM, (), True)
        if len(codes) >= 2 and codes[0].text == "-1":
            rest = self.product(codes[1:])
            return Code(f"-{rest.wrap(UNARY)}", UNARY, rest.axes, rest.const)
        axes = _union(codes)
        text = " * ".join(align(c, axes).wrap(PRODUCT) for c in codes)
        return Code(text, PRODUCT if len(codes) > 1 else codes[0].prec, axes,
                    all(c.const for c in codes))

    def pow(self, expr: sympy.Pow) -> Code:
        base, exponent = expr.args
        if exponent == sympy.Rational(1, 2):
            b = self._lower(base)
            return Code(f"torch.sqrt({b.text})", ATOM, b.axes)
        if exponent.is_Number and exponent < 0:
            return self.mul(sympy.Mul(1, expr, evaluate=False))
        b, e = self._lower(base), self._lower(exponent)
        axes = _union([b, e])
        return Code(f"{align(b, axes).wrap(POWER + 1)} ** {align(e, axes).wrap(UNARY)}",
                    POWER, axes, b.const and e.const)

    # ---- reductions, conditions
    def sum(self, expr: sympy.Sum) -> Code:
        expr = spec_indices(expr)
        body, limits = expr.args[0], expr.args[1:]
        summed = []
        for s, lo, hi in limits:
            summed.append(str(s))
            self.sizes[str(s)] = int(hi - lo + 1)
        exprs = _ordered(sympy.Mul.make_args(body))
        factors = [self._lower(f) for f in exprs]
        if any(map(self.is_complex, exprs)):  # einsum wants one dtype: the real ones join
            self.needs.add("complex")
            factors = [f if f.const or self.is_complex(e) else
                       Code(f"{f.wrap(ATOM)}.to(_cdtype)", ATOM, f.axes)
                       for f, e in zip(factors, exprs)]
        tensors = [f for f in factors if not f.const]
        consts = [f for f in factors if f.const]
        # an index no factor carries counts its terms: Σ_d g[n] = D g[n]
        absent = [a for a in summed if a not in _union(tensors)]
        if absent:
            consts.append(self.number(sympy.Integer(math.prod(self.sizes[a] for a in absent))))
            summed = [a for a in summed if a not in absent]
        if not tensors or not summed:
            return self.product(consts + tensors)
        out = tuple(a for a in _union(tensors) if a not in summed)
        # einsum contracts left to right: the factors that carry the summed axes first,
        # so Σ_l k[l] q[l] k[i] contracts k·q before it could build k[l] k[i]
        tensors.sort(key=lambda f: (not set(f.axes) & set(summed), len(f.axes)))
        if len(tensors) >= 2:
            letters = _letters({a for f in tensors for a in f.axes})
            spec = ",".join("..." + "".join(letters[a] for a in f.axes) for f in tensors)
            spec += "->..." + "".join(letters[a] for a in out)
            text = f'torch.einsum("{spec}", {", ".join(f.text for f in tensors)})'
        else:
            inner = tensors[0]
            dims = tuple(inner.axes.index(a) - len(inner.axes) for a in summed)
            text = f"{inner.wrap(ATOM)}.sum({dims if len(dims) > 1 else dims[0]})"
        code = Code(text, ATOM, out)
        return self.product(consts + [code]) if consts else code

    def is_complex(self, expr) -> bool:
        """Whether a value may be complex: it has 1j, or reads a complex tensor."""
        names = {str(x.base) for x in expr.atoms(sympy.Indexed)} | {
            str(x) for x in expr.free_symbols}
        return expr.has(sympy.I) or any(
            self.ir.decls[n].dtype == "complex" for n in names if n in self.ir.decls)

    def reduction(self, expr) -> Code:
        """max / min / logsumexp(body, index, its size, index, its size, ...)."""
        indices, sizes = expr.args[1::2], expr.args[2::2]
        reduced = [str(s) for s in indices]
        self.sizes.update({str(s): int(n) for s, n in zip(indices, sizes)})
        body = self._lower(expr.args[0])
        dims = tuple(body.axes.index(a) - len(body.axes) for a in reduced)
        out = tuple(a for a in body.axes if a not in reduced)
        return Code(f"{REDUCTIONS[str(expr.func)]}({body.text}, dim={dims})", ATOM, out)

    def piecewise(self, expr: sympy.Piecewise) -> Code:
        """Nested torch.where, the first true condition's value: sympy merges nested
        where(...)s into one Piecewise of any number of pieces (NaN where none holds)."""
        (a, cond), *rest = expr.args
        if not rest:
            rest = [(sympy.nan, True)]
        if len(rest) == 1 and rest[0][1] == sympy.true:
            b = self._lower(rest[0][0])
        else:
            b = self.piecewise(sympy.Piecewise(*rest, evaluate=False))
        parts = [self._lower(cond), self._lower(a), b]
        if parts[1].const and parts[2].const:  # two numbers: a float32 where, else
            self.needs.add("dtype")
            parts[1] = Code(f"torch.tensor({parts[1].text}, dtype=_dtype, device=_device)",
                            ATOM, ())
        axes = _union(parts)
        texts = [align(p, axes).text if not p.const else p.text for p in parts]
        return Code(f"torch.where({', '.join(texts)})", ATOM, axes)

    def compare(self, expr) -> Code:
        a, b = (self._lower(x) for x in expr.args)
        axes = _union([a, b])
        op = COMPARISONS[type(expr)]
        return Code(f"{align(a, axes).wrap(SUM)} {op} {align(b, axes).wrap(SUM)}", 50, axes)

    def delta(self, expr) -> Code:
        self.needs.add("dtype")
        cond = self.compare(sympy.Eq(*expr.args, evaluate=False))
        return Code(f"({cond.text}).to(_dtype)", ATOM, cond.axes)

    def extreme(self, expr) -> Code:
        parts = [self._lower(x) for x in expr.args]
        name = "maximum" if isinstance(expr, sympy.Max) else "minimum"
        consts = [p for p in parts if p.const]
        tensors = [p for p in parts if not p.const]
        axes = _union(tensors)
        text = align(tensors[0], axes).text
        for t in tensors[1:]:
            text = f"torch.{name}({text}, {align(t, axes).text})"
        for c in consts:
            bound = "min" if name == "maximum" else "max"
            text = f"torch.clamp({text}, {bound}={c.text})"
        return Code(text, ATOM, axes)


def spec_indices(expr, bound: frozenset = frozenset()):
    """expr with each summation index named by the spec's letter again (the analyzer
    numbers them: `e1` for the spec's `e`), where that letter is free there: einsums
    then read as the spec writes them, and equal sums of two expressions are equal."""
    if not isinstance(expr, sympy.Basic) or not expr.args:
        return expr
    if isinstance(expr, sympy.Sum):
        body, limits = expr.args[0], list(expr.args[1:])
        taken = {str(x) for x in expr.free_symbols} | set(bound)
        rename = {}
        for k, (var, lo, hi) in enumerate(limits):
            stem = str(var).rstrip("0123456789")
            if stem and stem != str(var) and stem not in taken:
                rename[var] = sympy.Symbol(stem, integer=True)
                limits[k] = (rename[var], lo, hi)
            taken.add(str(rename.get(var, var)))
        body = spec_indices(body.xreplace(rename), frozenset(taken))
        return sympy.Sum(body, *limits)
    return expr.func(*(spec_indices(a, bound) for a in expr.args))


class SpecText(StrPrinter):
    """sympy as the spec language writes it, for comments: sum(i: ...) with the spec's
    index letters, functions by their spec names (sigmoid, not Sigmoid), 1j."""

    def _print_Sum(self, expr):
        indices = ", ".join(str(var) for var, _, _ in expr.limits)
        return f"sum({indices}: {self._print(expr.function)})"

    def _print_Function(self, expr):
        name = expr.func.__name__
        args = ", ".join(self._print(a) for a in expr.args)
        return f"{name[0].lower() + name[1:]}({args})"

    def _print_Quotient(self, expr):
        return f"{self.parenthesize(expr.args[0], 50)} / {self._print(expr.args[1])}"

    def _print_ImaginaryUnit(self, expr):
        return "1j"

    def _print_Float(self, expr):
        """A named constant's value as its name (`scale`) or its expression (K ** -0.5)."""
        for c in self.constants:
            if float(expr) in (c.value, -c.value):
                text = c.stem if not c.stem.startswith("_") else f"({c.key})"
                return text if float(expr) == c.value else f"-{text}"
        return super()._print_Float(expr)


def spec_text(expr, ir: IR | None = None) -> str:
    """A sympy expression of the analyzer as spec text, for a comment (with `ir`, the
    numbers that are its named constants by name)."""
    printer = SpecText()
    printer.constants = sorted((c for c in spec_constants(ir).values()  # lets first
                                if isinstance(c.value, float)),
                               key=lambda c: c.stem.startswith("_")) if ir is not None else []
    return printer.doprint(spec_indices(sympy.sympify(expr)))


def _ordered(args):
    """Numbers first, then in sympy's printing order: deterministic output."""
    return sorted(args, key=lambda a: (not a.is_Number, sympy.default_sort_key(a)))


def _union(codes) -> tuple[str, ...]:
    axes: list[str] = []
    for c in codes:
        axes += [a for a in c.axes if a not in axes]
    return tuple(axes)
