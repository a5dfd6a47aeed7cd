"""The slots of the matrix-state chunk kernels (backends/templates/mat_chunk.py.jinja): a
state's operands w, k, v, q, a, b printed in Triton from the raw inputs, so that the
forward kernels compute them per tile instead of reading them from memory.

An operand goes into its kernel when its expression (analysis/operands.py) is
elementwise over the cell's inputs along the state's axes: every input read at the
axes themselves (k[h, i], beta[h]), no sum, no param, and only functions the Triton
printer knows. Any other operand (a projection sum(d: W x), a delta rule's query
q - β (k·q) k, a gate with a param) is computed in PyTorch as before and its slot
loads it. The backward recomputes the in-kernel operands in PyTorch (the same
expressions) and takes the chain rule from the kernels' operand gradients to the raw
inputs there (torch.func.vjp): exact, and the kernels' backward is unchanged.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import sympy

from reclang.analysis.operands import ChunkState, LinearPart, Unsupported, _linear_parts
from reclang.analysis.terms import Expander, Term, state_index
from reclang.ir import IR, Op

from .fused_loop import TritonPrinter
from .ir_to_torch import comment
from .stable_forms import RULES, rewrite

# the kernels' operand names, what they are, and the axes of the state they run over
ROLES = {"w": "log decay", "k": "input term, key side", "v": "input term, value side",
         "a": "low-rank part, a", "b": "low-rank part, b", "q": "readout query"}


@dataclass
class Branch:
    """One state's in-kernel code for one operand: `value` = the operand's tile."""
    state: int
    about: str
    code: str

    @property
    def masked(self) -> bool:
        """Whether the code reads the function's `mask` (not only a load's `mask=`)."""
        return re.search(r"\bmask\b(?!=)", self.code) is not None


@dataclass
class StateSlots:
    """Which operands of a state its kernels compute (`exprs`, by role) from which raw
    inputs (`raw`, in the cell's order), and which stay precomputed."""
    index: int
    state: ChunkState
    exprs: dict
    raw: list[str]
    precomputed: list[str]
    inclusive: bool = False  # its readout reads the new state


def chunk_path(s: ChunkState, queries: list) -> bool:
    """Whether the state runs the chunk kernels (one input term, one readout, a
    low-rank part of rank 1 at most): the launcher's choice, known when rendering."""
    return len(s.inputs) == 1 and len(queries) == 1 and len(s.low_rank) <= 1


def role_exprs(s: ChunkState, queries: list) -> dict:
    exprs = {"w": sympy.sympify(s.log_decay), "k": s.inputs[0][0], "v": s.inputs[0][1],
             "q": queries[0]}
    if s.low_rank:
        exprs["a"], exprs["b"] = s.low_rank[0]
    return {r: _gates(sympy.sympify(e)) for r, e in exprs.items()}


def role_axes(s: ChunkState, role: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(shared axes, column axes) of an operand's tile."""
    if role == "v":
        return s.shared, s.value
    if role == "w" and not s.decay_on_key:
        return s.shared, ()
    return s.shared, s.key


def state_slots(ir: IR, index: int, s: ChunkState, queries: list) -> StateSlots | None:
    """The slots of a state on the chunk path, or None (the recurrent kernel, or no
    operand that reads an input could go in)."""
    if not chunk_path(s, queries):
        return None
    exprs = role_exprs(s, queries)
    # a decay not proven positive is checked (check_log_decay) where it is computed
    inside = {r: e for r, e in exprs.items() if _printable(ir, s, r, e) and
              (r != "w" or s.positive)}
    used = set().union(*(_reads(e) for e in inside.values())) if inside else set()
    raw = [d.name for d in ir.inputs if d.name in used]
    if not raw:
        return None
    return StateSlots(index, s, inside, raw, [r for r in exprs if r not in inside])


def differentiable(slots: StateSlots) -> tuple[bool, ...]:
    """For each raw input of the slots, whether an in-kernel operand depends on it other
    than through a condition (a where's test): the backward gives the others no
    gradient, as autograd gives none to an input that only conditions read."""
    def depends(name: str) -> bool:
        return any(sympy.diff(e, x) != 0 for e in map(sympy.sympify, slots.exprs.values())
                   for x in e.atoms(sympy.Indexed) | e.free_symbols if _base(x) == name)
    return tuple(depends(name) for name in slots.raw)


def _base(x) -> str:
    return str(getattr(x, "base", x))


class NewState(str):
    """A state's name in a readout of its new value (equal to the name itself)."""


class NewStateExpander(Expander):
    """The affine normal form with the new states read as they are, not inlined: an
    output o = q·S of the updated S stays a readout of S_t, without the bonus term."""

    def terms_read(self, node, env) -> list[Term]:
        source = self.ir.node(node.args[0])
        if source.op != Op.UPDATE:
            return super().terms_read(node, env)
        return [Term(sympy.Integer(1), NewState(source.arg), state_index(node, source, env))]


def new_state_parts(ir: IR) -> tuple[LinearPart, ...] | None:
    """The outputs' linear parts as readouts of the new states where they read them
    (NewState), or None when they cannot be written so."""
    try:
        return tuple(_linear_parts(ir, NewStateExpander(ir)))
    except Unsupported:
        return None


def over_tile(s: ChunkState, query) -> bool:
    """Whether a query varies along the shared and key axes of the state only."""
    mine = {sympy.Symbol(a, integer=True) for a in s.axes}
    allowed = {sympy.Symbol(a, integer=True) for a in (*s.shared, *s.key)}
    return sympy.sympify(query).free_symbols & mine <= allowed


GATE_RULES = [r for r in RULES if r.name in ("log-exp", "sigmoid", "softplus")]


def _gates(expr):
    """The analyzer's elementary forms of the gates back as the functions the Triton
    printer has stable forms of (the printer's rules, stable_forms.RULES): log(1 + e^x)
    is softplus(x), 1 / (1 + e^-x) is σ(x) (an exp of a large argument would overflow)."""
    return rewrite(expr, GATE_RULES)


def _zero_outside(expr) -> bool:
    """Whether the operand is 0 where its inputs are (0 loaded outside the tile)."""
    reads = expr.atoms(sympy.Indexed)
    return bool(reads) and expr.xreplace(dict.fromkeys(reads, sympy.Integer(0))) == 0


def _reads(expr) -> set[str]:
    return {str(x.base) for x in expr.atoms(sympy.Indexed)}


def _printable(ir: IR, s: ChunkState, role: str, expr) -> bool:
    """Elementwise over the inputs along the operand's axes, printable in Triton, and
    unable to overflow from finite inputs (no exp outside the log decay, which is
    clamped): causal_pass checks the raw inputs of in-kernel operands, so an operand
    that could turn infinite from finite ones is computed in PyTorch, where it checks
    the operand itself."""
    if expr.has(sympy.Sum) or (role != "w" and _may_overflow(expr)):
        return False
    shared, columns = role_axes(s, role)
    axes = {sympy.Symbol(a, integer=True) for a in (*shared, *columns)}
    for x in expr.atoms(sympy.Indexed):
        decl = ir.decls.get(str(x.base))  # None: a composed sub-step's vector
        if decl is None or decl.kind != "input" or not set(x.indices) <= axes or \
                len(set(x.indices)) != len(x.indices):
            return False
    loose = expr.xreplace({x: sympy.Integer(1) for x in expr.atoms(sympy.Indexed)})
    if not loose.free_symbols <= axes:
        return False
    try:
        TritonPrinter("zero").doprint(expr)
    except NotImplementedError:
        return False
    return True


def _may_overflow(expr) -> bool:
    """An exp, or a power with a varying exponent, of something that reads an input."""
    expr = sympy.sympify(expr)
    return any(e.has(sympy.Indexed) for e in expr.atoms(sympy.exp)) or any(
        p.exp.has(sympy.Indexed) for p in expr.atoms(sympy.Pow))


class SlotPrinter:
    """The Triton code of each state's in-kernel operands."""

    def __init__(self, ir: IR, states: list[StateSlots]):
        self.ir, self.states = ir, states
        self.file = ir.source.filename.rsplit("/", 1)[-1]

    def branches(self, role: str) -> list[Branch]:
        return [self.branch(st, role) for st in self.states if role in st.exprs]

    def branch(self, st: StateSlots, role: str) -> Branch:
        s, expr = st.state, st.exprs[role]
        sizes = dict(zip(s.axes, self.ir.decls[s.name].shape))
        shared, columns = role_axes(s, role)
        lines, names = [], {}
        for x in sorted(expr.atoms(sympy.Indexed), key=str):
            name = f"raw_{x.base}"
            names[x] = sympy.Symbol(name, real=True)
            offset = self.offset(x, shared, columns, sizes)
            # an input without the columns' axes: one element per row, broadcast
            mask = "mask" if "cols" in offset else "valid[:, None]"
            lines.append(f"{name} = tl.load(raw[{st.raw.index(str(x.base))}] + {offset},")
            lines.append(" " * len(f"{name} = tl.load(") + f"mask={mask}, other=0.0).to(dtype)")
        for a in sorted(expr.xreplace(names).free_symbols - set(names.values()), key=str):
            names[a] = sympy.Symbol(f"at_{a}", real=True)
            lines.append(f"at_{a} = {self.axis(str(a), shared, columns, sizes)}.to(dtype)")
        text = TritonPrinter("zero").doprint(expr.xreplace(names))
        if "zero" in text:  # a where of numbers: a tile of the operand's dtype
            lines.append("zero = tl.zeros(mask.shape, dtype)")
        if _zero_outside(expr):  # the masked loads are 0 there, and so is the value
            lines.append(f"value = {text}")
        else:
            lines.append(f"value = tl.where(mask, {text}, 0.0).to(dtype)")
        if role == "w":  # a decay of 0: exp(LOG_ZERO) is 0 too, and sums stay finite
            lines.append("value = tl.where(value < floor, floor, value)")
        about = comment(f"{s.name}: {ROLES[role]} {st.exprs[role]}")
        return Branch(st.index, about, "\n".join(lines))

    def offset(self, x: sympy.Indexed, shared, columns, sizes) -> str:
        """Where an input's element is in its [tokens, *shape] tensor."""
        shape = self.ir.decls[str(x.base)].shape
        terms = [f"token[:, None] * {math.prod(shape)}"]
        for p, sub in enumerate(x.indices):
            stride = math.prod(shape[p + 1:])
            at = self.axis(str(sub), shared, columns, sizes)
            terms.append(at if stride == 1 else f"{at} * {stride}")
        return " + ".join(terms)

    @staticmethod
    def axis(a: str, shared, columns, sizes) -> str:
        """The index along axis `a` of the tile: from h (the flattened shared axes) or
        from the columns (the flattened key or value axes)."""
        group, flat = (shared, "h") if a in shared else (columns, "cols")
        p = group.index(a)
        div, size = math.prod(sizes[b] for b in group[p + 1:]), sizes[a]
        if len(group) == 1:
            return flat if flat == "h" else "cols[None, :]"
        at = f"({flat} // {div}) % {size}"
        return at if flat == "h" else f"({at})[None, :]"

    def slots(self) -> dict:
        return {role: self.branches(role) for role in ROLES}
