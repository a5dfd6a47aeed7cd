"""Lowering IR values to PyTorch expressions, shared by the PyTorch backends.

Layout. A value with axes (a, b) is a tensor whose trailing dimensions are a, b in
that order, behind a prefix that depends on where it is computed (`Place`):

    ONCE   []       params and what depends only on them: computed once per call
    HOIST  [B, T]   depends on inputs but on no state: computed for all steps at once
    LOOP   [B]      one time step inside the loop (and everything in the step form)

All axis manipulation works from the right (`x[..., :, None]`, negative dims,
einsum's `...`), so the same code is right for every prefix, and values of different
places broadcast against each other. A HOIST value read inside the loop is `x[:, t]`.
"""

from __future__ import annotations

import cmath
import math
from enum import IntEnum

from reclang import errors
from reclang.functions import FUNCTIONS, REDUCTIONS
from reclang.ir import IR, IndexExpr, Node, Op

from .constants import Constant, spec_constants
from .names import Names, py_name

# Precedence of emitted Python expressions, for minimal parentheses.
ATOM, POWER, UNARY, PRODUCT, SUM, COMPARE, LOWEST = 100, 90, 80, 70, 60, 50, 0
OPERATORS = {  # IR function -> (precedence, left needs, right needs)
    "pow": (POWER, POWER + 1, UNARY), "mul": (PRODUCT, PRODUCT, PRODUCT + 1),
    "div": (PRODUCT, PRODUCT, PRODUCT + 1), "add": (SUM, SUM, SUM + 1),
    "sub": (SUM, SUM, SUM + 1), **{c: (COMPARE, COMPARE + 1, COMPARE + 1)
                                   for c in ("lt", "le", "gt", "ge", "eq", "ne")},
}


class Place(IntEnum):
    ONCE = 0
    HOIST = 1
    LOOP = 2


def number(value) -> str:
    """A Python number as source that evaluates to it: repr where that is a literal,
    float("inf") / float("nan") where it is not, complex(re, im) for complex values,
    and integers past float's exact range as the float they stand for (reclang's
    numbers are real; `2 ** 1000` as an int would overflow in a tensor op)."""
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, complex):
        if cmath.isfinite(value):
            return repr(value)
        return f"complex({number(value.real)}, {number(value.imag)})"
    if isinstance(value, int):
        return repr(value) if abs(value) <= 2 ** 53 else repr(float(value))
    if math.isfinite(value):
        return repr(value)
    if math.isnan(value):
        return 'float("nan")'
    return 'float("inf")' if value > 0 else '-float("inf")'


def comment(text: str) -> str:
    """Outside text (a file name, a spec line, a hyperparameter value) as it may stand in
    a generated comment or docstring: one line that cannot end either early. Every
    character that is not printable (controls, NUL, U+0085, U+2028, U+2029, lone
    surrogates: line breaks to Python or to an editor, or not writable as UTF-8) and the
    backslash and the double quote (escapes and docstring ends) are written as \\xNN, \\uNNNN."""
    return "".join(ch if ch.isprintable() and ch not in _UNSAFE else _escape(ord(ch))
                   for ch in text)


_UNSAFE = "\\\""


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


class Code:
    """A Python expression with its precedence and the axes of the value it computes."""

    def __init__(self, text: str, prec: int, axes: tuple[str, ...], const: bool = False,
                 dtype: str = "real"):
        self.text, self.prec, self.axes, self.const = text, prec, tuple(axes), const
        self.dtype = dtype

    def wrap(self, needed: int) -> str:
        return self.text if self.prec >= needed else f"({self.text})"


class ExprLowering:
    """Turns IR nodes into PyTorch expressions, given where each node is computed.

    Nodes computed in an earlier place than their reader (a gate computed before the
    loop, read inside it) are assigned to a named temporary in that place's block;
    everything else is inlined into the statement that uses it.
    """

    def __init__(self, ir: IR, place: dict[int, Place], blocks: dict[Place, list[str]],
                 names: Names | None = None):
        self.ir, self.place, self.blocks = ir, place, blocks
        self.temps: dict[int, str] = {}
        self.needs: set[str] = set()  # "dtype", "batch": variables the code must define
        self.unbound: dict[str, str] = {}  # sequences the loop reads step by step
        self.names = names or Names(ir)

    # ---- names
    def var(self, i: int) -> str:
        node = self.ir.node(i)
        if node.op in (Op.INPUT, Op.PARAM, Op.STATE, Op.UPDATE, Op.LET, Op.OUT):
            return py_name(node.arg)
        return self.temps[i]

    def new_temp(self, node: Node) -> str:
        """A readable name for a materialized value: its function and the first
        tensor it reads (`_exp_g`, `_sum_W`), made unique."""
        if node.op == Op.INDEX:
            stem = f"_index_{node.arg}"
        else:
            stem = f"_{node.arg[0] if node.op == Op.REDUCE else node.arg}"
            first = self.first_read(node)
            if first is not None:
                stem += "_" + py_name(str(self.ir.node(first.args[0]).arg))
        return self.names.fresh(stem)

    def first_read(self, node: Node) -> Node | None:
        """The first READ in the expression below a node (depth first, left to right)."""
        for a in node.args:
            child = self.ir.node(a)
            found = child if child.op == Op.READ else self.first_read(child)
            if found is not None:
                return found
        return None

    # ---- values
    def code(self, i: int, at: Place) -> Code:
        """The expression for node i, read from a statement computed at `at`; an
        unexpected failure is reported at the node's spec location."""
        node = self.ir.node(i)
        home = self.place[i]
        trivial = node.op in (Op.CONST, Op.READ) or (
            node.op == Op.FN and node.arg == "neg" and self.ir.node(node.args[0]).op == Op.CONST)
        with errors.at(node, "lowering"):
            code = self.materialize(i, at) if home < at and not trivial else self.lower(node, at)
        code.dtype = node.dtype
        return code

    def lower(self, node: Node, at: Place) -> Code:
        """The node's own expression, by the `lower_<op>` method for its op."""
        method = getattr(self, "lower_" + node.op.name.lower(), None)
        if method is None:  # read through READ nodes, never printed on their own
            raise NotImplementedError(f"no rule prints a {node.op.name.lower()} node as PyTorch")
        return method(node, at)

    def materialize(self, i: int, at: Place) -> Code:
        node = self.ir.node(i)
        home = self.place[i]
        if i not in self.temps:
            text = self.lower_value(i, home)
            self.temps[i] = self.new_temp(node)
            self.emit(home, node, f"{self.temps[i]} = {text}")
        text = self.temps[i]
        if home == Place.HOIST and at == Place.LOOP:
            text = self.at_step(text)
        return Code(text, ATOM, node.axes)

    def at_step(self, var: str) -> str:
        """A sequence value [B, T, ...] read at step t. The sequence is split into its
        steps once, before the loop (`x.unbind(1)`): indexing `x[:, t]` inside the loop
        would make autograd build a full-size gradient for every step."""
        if var not in self.unbound:
            self.unbound[var] = self.names.fresh(f"_{var.strip('_')}_t")  # B_ (B is taken): _B_t
        return f"{self.unbound[var]}[t]"

    def lower_value(self, i: int, home: Place) -> str:
        return self.lower(self.ir.node(i), home).text

    def emit(self, place: Place, node: Node, line: str):
        """Appends a line to a block, after the spec line it comes from."""
        block = self.blocks[place]
        loc = self.ir.node(self.ir.stmts[node.stmt]).loc if node.stmt >= 0 else node.loc
        origin = f"# {spec_origin(self.ir, loc.line)}"
        if not block or block[-1] != origin and origin not in block[-3:]:
            block.append(origin)
        block.append(line)

    def lower_const(self, node: Node, at: Place) -> Code:
        c = spec_constants(self.ir).get((node.loc.line, node.loc.col))
        if c is not None and c.value == node.arg and type(c.value) is type(node.arg):
            name, new = self.names.constant(("constant", c.key), c.stem)
            if new:
                self.blocks[Place.ONCE].append(constant_line(name, c))
            return Code(name, ATOM, (), True)
        text = number(node.arg)
        return Code(text, UNARY if text.startswith("-") else ATOM, (), True)

    def lower_index(self, node: Node, at: Place) -> Code:
        self.needs.add("dtype")
        text = f"torch.arange({node.sizes[0]}, dtype=_dtype, device=_device)"
        return Code(text, ATOM, node.axes)

    def lower_read(self, node: Node, at: Place) -> Code:
        source = node.args[0]
        home = self.place[source]
        var = self.var(source)
        if home == Place.HOIST and at == Place.LOOP:
            var, home = self.at_step(var), Place.LOOP
        if any(isinstance(s, IndexExpr) for s in node.arg):
            return self.gather(var, node)
        prefix = {Place.ONCE: [], Place.LOOP: [":"], Place.HOIST: [":", ":"]}[home]
        parts = prefix + [":" if isinstance(s, str) else str(s) for s in node.arg]
        while parts and parts[-1] == ":":
            parts.pop()
        text = var + (f"[{', '.join(parts)}]" if parts else "")
        return Code(text, ATOM, node.axes)

    def gather(self, var: str, node: Node) -> Code:
        """A read with integer expressions in its subscripts (`x[i + 1]`, `k[h // G, i]`):
        the runtime's gather over the result's axes, 0 outside the tensor."""
        self.runtime()
        axes = ", ".join(py_name(a) for a in node.axes)
        subs = "".join(index_text(s) + ", " for s in node.arg)
        sizes = "".join(f"{n}, " for n in node.sizes)
        return Code(f"_lag.gather({var}, lambda {axes}: ({subs}), ({sizes}))", ATOM, node.axes)

    def runtime(self):
        """The runtime helpers of reclang/runtime/lag.py, imported once per function."""
        if ("runtime", "lag") not in self.names.memo:
            self.names.memo["runtime", "lag"] = "_lag"
            self.blocks[Place.ONCE].insert(0, "from reclang.runtime import lag as _lag")

    def lower_fn(self, node: Node, at: Place) -> Code:
        args = [self.code(a, at) for a in node.args]
        target = node.axes
        if node.arg in ("max", "min") and any(a.const for a in args):
            tensor, const = (args[1], args[0]) if args[0].const else (args[0], args[1])
            bound = "min" if node.arg == "max" else "max"
            return Code(f"torch.clamp({align(tensor, target).text}, {bound}={const.text})",
                        ATOM, target)
        if node.arg == "clamp" and not args[0].const and any(a.const for a in args[1:]):
            return _clamp(args, target)
        if node.arg == "neg":
            return Code("-" + align(args[0], target).wrap(UNARY), UNARY, target)
        if node.arg in OPERATORS:
            prec, left, right = OPERATORS[node.arg]
            a, b = (align(x, target) for x in args)
            symbol = FUNCTIONS[node.arg].torch.format("", "").strip()
            return Code(f"{a.wrap(left)} {symbol} {b.wrap(right)}", prec, target)
        if node.arg == "complex":
            a, b = (align(x, target) for x in args)
            return Code(f"{a.wrap(SUM + 1)} + 1j * {b.wrap(PRODUCT + 1)}", SUM, target)
        if node.arg == "where" and args[1].const and args[2].const:
            args[1] = self.typed(args[1], node.dtype)
        if node.arg in ("mod", "floordiv") and args[0].const:  # (number, tensor) has no backward
            args[0] = self.typed(args[0], node.dtype)
        texts = [align(x, target).text for x in args]
        return Code(FUNCTIONS[node.arg].torch.format(*texts), ATOM, target)

    def typed(self, const: Code, dtype: str) -> Code:
        """A constant as a 0-d tensor of the computation's dtype (torch.where of two
        numbers would be float32, or int64, whatever the inputs are), made once per call
        before everything else: never a new tensor at every step of the loop."""
        self.needs.add("dtype")
        kind = "torch.promote_types(_dtype, torch.complex64)" if dtype == "complex" else "_dtype"
        value = f"torch.tensor({const.text}, dtype={kind}, device=_device)"
        made = ("typed", value) in self.names.memo
        name = self.names.of(("typed", value), "_const")
        if not made:
            self.blocks[Place.ONCE].append(f"{name} = {value}")
        return Code(name, ATOM, (), True)  # 0-d: it broadcasts as a number does

    def lower_reduce(self, node: Node, at: Place) -> Code:
        kind, reduced = node.arg
        body = self.ir.node(node.args[0])
        if kind == "sum":
            factors, scale = self.factors(node.args[0], at)
            if len(factors) >= 2:
                return self.einsum(factors, scale, node.axes)
        inner = self.code(node.args[0], at)
        dims = tuple(-(len(body.axes) - body.axes.index(r)) for r in reduced)
        dims_text = str(dims[0]) if len(dims) == 1 else str(dims)
        return Code(f"{REDUCTIONS[kind]}({inner.text}, dim={dims_text})", ATOM, node.axes)

    def factors(self, i: int, at: Place) -> tuple[list[Code], list[Code]]:
        """Splits a product into its tensor factors and its constant factors."""
        node = self.ir.node(i)
        inlined = self.place[i] >= at
        if node.op == Op.FN and node.arg == "mul" and inlined:
            tensors, consts = [], []
            for a in node.args:
                t, c = self.factors(a, at)
                tensors += t
                consts += c
            return tensors, consts
        code = self.code(i, at)
        return ([], [code]) if code.const else ([code], [])

    def einsum(self, factors: list[Code], scale: list[Code], out_axes) -> Code:
        if any(f.dtype == "complex" for f in factors):
            # einsum wants one dtype: real factors join the complex ones
            if any(f.dtype != "complex" for f in factors):
                self.needs.add("complex")
            factors = [f if f.dtype == "complex" else
                       Code(f"{f.wrap(ATOM)}.to(_cdtype)", ATOM, f.axes) for f in factors]
        letters = _letters({a for f in factors for a in f.axes})
        spec = ",".join("..." + "".join(letters[a] for a in f.axes) for f in factors)
        spec += "->..." + "".join(letters[a] for a in out_axes)
        text = f'torch.einsum("{spec}", {", ".join(f.text for f in factors)})'
        for c in scale:
            text += f" * {c.wrap(PRODUCT + 1)}"
        return Code(text, PRODUCT if scale else ATOM, out_axes)

def index_text(sub) -> str:
    """A subscript as Python over the index variables: `i`, `3`, `(i + 1) % N`."""
    if isinstance(sub, IndexExpr):
        return f"({index_text(sub.left)} {sub.op} {index_text(sub.right)})"
    return py_name(sub) if isinstance(sub, str) else str(sub)


def constant_line(name: str, c: Constant) -> str:
    """`scale = 0.125  # K ** -0.5, line 11`."""
    return f"{name} = {number(c.value)}  # {comment(c.note)}"


def spec_origin(ir: IR, line: int) -> str:
    """`file:line: the spec line`, escaped for a comment."""
    return comment(f"{ir.source.filename.rsplit('/', 1)[-1]}:{line}: "
                   f"{ir.source.line(line).strip()}")


def _clamp(args: list[Code], target: tuple[str, ...]) -> Code:
    """clamp(x, lo, hi) with a number among the bounds: torch.clamp takes both bounds as
    tensors or both as numbers, so one clamp per bound, each in its own form (the
    gradients of torch.clamp(x, lo, hi) wherever lo <= hi)."""
    text = align(args[0], target).text
    for bound, code in zip(("min", "max"), args[1:]):
        value = code.text if code.const else align(code, target).text
        text = f"torch.clamp({text}, {bound}={value})"
    return Code(text, ATOM, target)


def align(code: Code, target: tuple[str, ...]) -> Code:
    """Moves and adds axes so that `code` broadcasts against a value with `target`."""
    if code.const or code.axes == tuple(target):
        return code
    order = sorted(code.axes, key=target.index)
    text = code.text
    if list(code.axes) != order:
        k = len(code.axes)
        src = tuple(range(-k, 0))
        dst = tuple(order.index(a) - k for a in code.axes)
        text = f"{code.wrap(ATOM)}.movedim({src}, {dst})"
        code = Code(text, ATOM, tuple(order))
    if len(order) == len(target):
        return code
    # after the leading `...`, slices before the first new axis are implied
    parts = [":" if a in order else "None" for a in target]
    while parts[0] == ":":
        parts.pop(0)
    return Code(f"{code.wrap(ATOM)}[..., {', '.join(parts)}]", ATOM, tuple(target))


def _letters(axes: set[str]) -> dict[str, str]:
    """Einsum letters for axis names: the names themselves where they are letters, else
    their first letter, else a letter no other axis has."""
    letters = {a: a for a in axes if len(a) == 1 and a.isalpha()}
    for a in sorted(set(axes) - set(letters)):
        if a[:1].isalpha() and a[0] not in letters.values():
            letters[a] = a[0]
    pool = (c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
            if c not in letters.values())
    return {a: letters.get(a) or next(pool) for a in sorted(axes)}
