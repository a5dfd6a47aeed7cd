"""The program of the chunk backend (backends/chunk.py): each state's operands
w, a, b, k, v, q printed from the analyzer's expressions, the pass over the sequence,
and the epilogue from the linear readouts."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

from reclang.analysis.operands import ChunkState, MatState
from reclang.analysis.partition import Phase, phases
from reclang.ir import IR, Op
from reclang.schedule import ChunkSchedule, Schedule

from .chunk_operands import (ChunkSympyLowering, definitions_read, delta_rule_scale,
                             role_exprs, same_but_values)
from .ir_to_torch import (
    ATOM,
    Code,
    ExprLowering,
    Names,
    Place,
    align,
    comment,
    py_name,
    spec_origin,
)
from .loop import INDENT, Program, _broadcast
from .sympy_to_torch import spec_text


# ---- the generated program -----------------------------------------------------------
class EpilogueLowering(ExprLowering):
    """The outputs over all steps at once, with the linear parts given."""

    def __init__(self, ir, place, blocks, given: dict[int, str], names: Names | None = None):
        super().__init__(ir, place, blocks, names)
        self.given = given

    def code(self, i: int, at: Place) -> Code:
        if i in self.given:
            return Code(self.given[i], ATOM, self.ir.node(i).axes, dtype=self.ir.node(i).dtype)
        return super().code(i, at)


class StatesLowering(EpilogueLowering):
    """The outputs over all steps, reading the states' new values from _<s>_new and
    their previous ones from _<s>_prev ([B, T, ...] both)."""

    def var(self, i: int) -> str:
        node = self.ir.node(i)
        if node.op in (Op.UPDATE, Op.STATE):
            return states_var(self.names, node.arg, "new" if node.op == Op.UPDATE else "prev")
        return super().var(i)


def states_var(names: Names, state: str, which: str) -> str:
    """The tensor of the new ("new") or previous ("prev") values of a state at every step."""
    return names.of((which, state), f"_{py_name(state)}_{which}")


class ChunkProgram(Program):
    pass_function = "chunk_affine"  # what runs one state over the sequence
    how = "in chunks"
    packed = False  # whether forward takes cu_seqlens itself (else RecModule groups them)

    def __init__(self, ir: IR, operands: MatState, schedule: Schedule | None = None,
                 summary: str = ""):
        super().__init__(ir, schedule or ChunkSchedule(), summary)
        self.ops = operands
        self.sizes = {}
        for i in ir.stmts:
            node = ir.node(i)
            self.sizes.update(zip(node.axes, node.sizes))
        self.sympy = ChunkSympyLowering(ir, {})
        self.lines: list[str] = []

    # ---- operands
    def emit_operand(self, name: str, exprs, axes: tuple[str, ...], sizes, note: str):
        """`name = [B, T, len(exprs), *sizes]` from sympy expressions over `axes`, or
        `[B, T, *sizes]` for a single expression given alone."""
        self.lines.append(f"# {comment(note)}")
        single = not isinstance(exprs, (list, tuple))
        full = []
        for e in [exprs] if single else exprs:
            code = self.sympy.lower(e)
            text = code.text if code.const else align(code, axes).text
            full.append(f"operand({text}, _like, {_shape(sizes)})")
        if single:
            self.lines.append(f"{name} = {full[0]}")
        elif len(full) == 1:
            self.lines.append(f"{name} = {full[0]}[:, :, None]")
        else:
            self.lines.append(f"{name} = torch.stack([{', '.join(full)}], 2)")

    def state_block(self, s: ChunkState, queries: list) -> str:
        """Emits the operands and the chunk call of one state; returns the output var."""
        v = self.state_vars(s)
        self.lines.append(f"# ---- {self.spec_line(s.name)}")
        self.emit_operands(s, v, queries, "wabkvq")
        Hs, shared = self.flat(s, s.shared)
        scale = delta_rule_scale(s) if self.pass_function == "chunk_affine" else None
        if scale is not None:
            self.emit_operand(v.ak, [scale], s.shared, shared,
                              f"a = {self.text(scale)} k: scores against a are those against k, "
                              "scaled")
            self.lines[-1] += f".reshape(B, T, 1, {Hs}, 1)"
        lr = f"{v.a}, {v.b}" if s.low_rank else "None, None"
        q = v.q if queries else "None"
        chunk = ", cu_seqlens=cu_seqlens" if self.packed else self.schedule_args()
        if scale is not None:
            chunk += f", a_over_k={v.ak}"
        self.lines.append(f"{v.out}, {v.last} = {self.pass_function}({v.w}, {lr}, "
                          f"{v.k}, {v.v}, {q}, {self.initial(s)}{chunk})")
        self.final(s, v)
        return v.out

    def state_groups(self, per_state: dict) -> list[list[ChunkState]]:
        """The states in groups that one pass runs: those with the same decay, keys and
        queries (mLSTM's S and normalizer n) differ only in their values, so their
        values side by side along the value axis make one state whose scores, decays
        and chunk-to-chunk scan they share. Only chunk_affine's states without a
        low-rank part or sub-step definitions are grouped (the others alone)."""
        groups: list[list[ChunkState]] = []
        for s in self.ops.states:
            home = next((g for g in groups if self.pass_function == "chunk_affine"
                         and same_but_values(g[0], s, per_state, self.ir)), None)
            if home is None:
                groups.append([s])
            else:
                home.append(s)
        return groups

    def shared_block(self, group: list[ChunkState], queries: list) -> dict[str, str]:
        """One chunk_affine call for the states of a group (state_groups): the decay,
        keys and queries of the first, the values and initial states of all side by
        side; returns each state's output var (its slice of the values)."""
        first, vs = group[0], [self.state_vars(s) for s in group]
        lines = "; ".join(self.spec_line(s.name) for s in group)
        self.lines.append(f"# ---- one pass for {lines}")
        self.emit_operands(first, vs[0], queries, "wkq")
        for s, v in zip(group, vs):
            self.emit_operands(s, v, queries, "v")
        v, widths = vs[0], [self.flat(s, s.value)[0] for s in group]
        values = f"torch.cat([{', '.join(x.v for x in vs)}], -1)"
        initial = f"torch.cat([{', '.join(self.initial(s) for s in group)}], -1)"
        q = v.q if queries else "None"
        out, last = self.names.fresh("_shared_out"), self.names.fresh("_shared_last")
        self.lines.append(f"{out}, {last} = chunk_affine({v.w}, None, None, {v.k}, "
                          f"{values}, {q}, {initial}{self.schedule_args()})")
        # split, not slices: the backward of a slice is a zero tensor of the full size
        split = f".split({widths}, -1)"
        if queries:
            self.lines.append(f"{', '.join(x.out for x in vs)} = {out}{split}")
        self.lines.append(f"{', '.join(x.last for x in vs)} = {last}{split}")
        for s, x in zip(group, vs):
            self.final(s, x)
        return {s.name: x.out for s, x in zip(group, vs)}

    def state_vars(self, s: ChunkState) -> SimpleNamespace:
        """The generated names of a state's operands and results."""
        self.sympy.sizes.update(zip(s.axes, self.ir.decls[s.name].shape))
        name = py_name(s.name)
        return SimpleNamespace(**{x: self.names.fresh(f"_{name}_{x}")
                                  for x in ("w", "a", "b", "k", "ak", "v", "q", "out", "last")})

    def flat(self, s: ChunkState, axes) -> tuple[int, list[int]]:
        """The size of `axes` of a state flattened, and their sizes."""
        size = dict(zip(s.axes, self.ir.decls[s.name].shape))
        return math.prod(size[a] for a in axes), [size[a] for a in axes]

    def emit_operands(self, s: ChunkState, v, queries: list, roles: str) -> None:
        """The lines of the operands in `roles` (of w, a, b, k, v, q) of a state, in the
        layout [B, T, (rank,) shared, key or value]."""
        (Hs, shared), (Kf, key), (Vf, value) = (self.flat(s, x) for x in (s.shared, s.key,
                                                                          s.value))
        hk = s.shared + s.key
        self.emit_definitions(s, role_exprs(s, queries, roles))
        if "w" in roles and s.log_decay == 0:
            self.lines.append(f"{v.w} = _like.new_zeros((B, T, {Hs}, 1))  # no decay")
        elif "w" in roles:
            axes = hk if s.decay_on_key else s.shared
            sz = shared + key if s.decay_on_key else shared
            self.emit_operand(v.w, s.log_decay, axes, sz, f"log decay: {self.text(s.log_decay)}")
            if not (s.decay_on_key and len(shared) == len(key) == 1):  # else the layout already
                self.lines[-1] += f".reshape(B, T, {Hs}, {Kf if s.decay_on_key else 1})"
            if not s.positive:
                self.lines.append(f'check_log_decay({v.w}, "{s.name}")')
                self.checks = True
        # one shared and one key (value) axis is the layout already; else flatten them
        flat_k = f".reshape(B, T, -1, {Hs}, {Kf})" if (len(shared), len(key)) != (1, 1) else ""
        flat_v = f".reshape(B, T, -1, {Hs}, {Vf})" if (len(shared), len(value)) != (1, 1) \
            else ""
        for side, pos in (("a", 0), ("b", 1)):
            if s.low_rank and side in roles:
                self.emit_operand(getattr(v, side), [p[pos] for p in s.low_rank], hk,
                                  shared + key, f"low-rank part: {side}_r = "
                                  + self.text(*(p[pos] for p in s.low_rank)))
                self.lines[-1] += flat_k
        if "k" in roles:
            self.emit_operand(v.k, [p[0] for p in s.inputs], hk, shared + key,
                              "input term, key side: " + self.text(*(p[0] for p in s.inputs)))
            self.lines[-1] += flat_k
        if "v" in roles:
            self.emit_operand(v.v, [p[1] for p in s.inputs], s.shared + s.value,
                              shared + value, "input term, value side: "
                              + self.text(*(p[1] for p in s.inputs)))
            self.lines[-1] += flat_v
        if queries and "q" in roles:
            self.emit_operand(v.q, queries, hk, shared + key,
                              "readout queries (of the previous state): "
                              + self.text(*queries))
            self.lines[-1] += flat_k

    def emit_definitions(self, s: ChunkState, exprs: list) -> None:
        """The vectors of a state updated in sub-steps which `exprs` read, each named once
        (analysis/substeps.py): only those, as the operands of some roles are printed
        where the inputs the others read are not at hand (triton's _<state>_operands)."""
        for d in definitions_read(s, exprs):
            axes = tuple(str(x) for x in d.index)
            self.sympy.sizes.update(zip(axes, d.sizes))  # the rank index is used as a value
            var = self.names.fresh(d.name)
            self.emit_operand(var, d.value, axes, d.sizes, f"{d.name} = {self.text(d.value)}")
            self.sympy.defined[d.name] = (var, d.sizes)

    def initial(self, s: ChunkState) -> str:
        """The state as the passes take it: [B or N, shared, key, value]."""
        (Hs, _), (Kf, _), (Vf, _) = (self.flat(s, x) for x in (s.shared, s.key, s.value))
        order = [s.axes.index(a) + 1 for a in s.shared + s.key + s.value]
        name = py_name(s.name)
        moved = order != sorted(order)
        return (f"{name}.permute(0, {', '.join(map(str, order))})" if moved else name) + \
            f".reshape(-1, {Hs}, {Kf}, {Vf})"  # -1: packed sequences have B = 1, N states

    def final(self, s: ChunkState, v) -> None:
        """The state back in its own layout from the pass's last one."""
        order = [s.axes.index(a) + 1 for a in s.shared + s.key + s.value]
        back = [order.index(p + 1) + 1 for p in range(len(s.axes))]
        sizes = self.flat(s, s.shared)[1] + self.flat(s, s.key)[1] + self.flat(s, s.value)[1]
        final = f"{v.last}.reshape(-1, {', '.join(map(str, sizes))})"
        if order != sorted(order):
            final += f".permute(0, {', '.join(map(str, back))})"
        elif len(s.shared) == len(s.key) == len(s.value) == 1:  # the state's own layout
            final = v.last
        self.lines.append(f"{py_name(s.name)} = {final}")

    def text(self, *exprs) -> str:
        """The analyzer's expressions in the spec's notation, for a comment."""
        return ", ".join(spec_text(e, self.ir) for e in exprs)

    def schedule_args(self) -> str:
        """The schedule's arguments of chunk_affine."""
        return f", chunk={self.schedule.chunk}, segment={self.schedule.segment}"

    def spec_line(self, state: str) -> str:
        return spec_origin(self.ir, self.ir.update(state).loc.line)

    # ---- linear parts of the outputs
    def readouts(self) -> tuple[dict, dict]:
        """The queries of each state and, for each part and (state, axes, post), the
        index of its query. Terms of one part that share a state, node axes and post
        factor are summed into one query; the parts keep their own queries (two parts
        share one only when it is the same expression), because an output may combine
        them nonlinearly (o * o, an RMSNorm of o) and a sum would read as each."""
        per_state: dict = {}
        index = {}
        for n, part in enumerate(self.ops.parts):
            groups: dict = {}
            for t in part.terms:
                key = (t.state, t.axes, t.post)
                groups[key] = groups.get(key, 0) + t.query
            for (state, axes, post), query in groups.items():
                queries = per_state.setdefault(state, [])
                if query not in queries:
                    queries.append(query)
                index[(n, state, axes, post)] = queries.index(query)
        return per_state, index

    def part_block(self, n: int, outs: dict, index: dict, made: dict) -> str:
        part = self.ops.parts[n]
        node = self.ir.node(part.node)
        self.sympy.sizes.update(zip(node.axes, node.sizes))
        pieces = []
        seen = set()
        for t in part.terms:
            key = (t.state, t.axes, t.post)
            if key in seen:
                continue
            seen.add(key)
            s = next(x for x in self.ops.states if x.name == t.state)
            size = dict(zip(s.axes, self.ir.decls[s.name].shape))
            mapping = dict(t.axes)
            axes = tuple(mapping[a] for a in s.shared + s.value)
            sizes = ", ".join(str(size[a]) for a in s.shared + s.value)
            read = Code(f"{outs[t.state]}[:, :, {index[(n, *key)]}].reshape(B, T, {sizes})"
                        .replace(", )", ")"), ATOM, axes)
            if t.post != 1:
                read = self.sympy.product([self.sympy.lower(t.post), read])
            pieces.append(read)
        if part.free != 0:
            pieces.append(self.sympy.lower(part.free))
        codes = [p.text if p.const else align(p, node.axes).text for p in pieces]
        value = f"operand({' + '.join(codes)}, _like, {_shape(node.sizes)})"
        if value not in made:
            made[value] = self.names.fresh("_linear")
            self.lines.append(f"# linear in the states: {comment(self.ir.spec_line(node.loc))}")
            self.lines.append(f"{made[value]} = {value}")
        return made[value]

    # ---- assembly
    def forward(self) -> str:
        first = py_name(self.ir.inputs[0].name)
        self.names = self.sympy.names = Names(self.ir)
        self.lines, self.checks, self.needs = [], False, set()
        self.sympy.definitions = []
        per_state, index = self.readouts()
        outs = {}
        for group in self.state_groups(per_state):
            queries = per_state.get(group[0].name, [])
            if len(group) == 1:
                outs[group[0].name] = self.state_block(group[0], queries)
            else:
                outs.update(self.shared_block(group, queries))
        self.given = {}
        made: dict[str, str] = {}  # value -> its var: o * o computes o once
        for n, part in enumerate(self.ops.parts):
            self.given[part.node] = self.part_block(n, outs, index, made)
        self.lines += self.epilogue()
        self.lines[:0] = preamble(first, self.needs | self.sympy.needs, self.lines) + \
            self.sympy.definitions
        outputs = ", ".join(f'"{self.ir.node(i).arg}": {py_name(self.ir.node(i).arg)}'
                            for i in self.ir.stmts if self.ir.node(i).op == Op.OUT)
        states = ", ".join(f'"{d.name}": {py_name(d.name)}' for d in self.ir.states)
        self.lines.append(f"return {{{outputs}}}, {{{states}}}")
        doc = (f'"""Runs {self.ir.name} over whole sequences {self.how}: inputs [B, T, ...]; '
               'returns (outputs, final states)."""')
        signature = self.signature("forward")
        if self.packed:
            signature, doc = self.packed_signature(doc)
        return "\n".join([signature, INDENT + doc] +
                         [INDENT + line for line in self.lines])

    def epilogue(self) -> list[str]:
        """The output statements over all steps, reading the linear parts."""
        return epilogue(self.ir, self.given, names=self.names, needs=self.needs)

    def source(self) -> str:
        header = self.header([
            "Chunk backend: the chunkwise-parallel form (reclang.runtime.chunk.chunk_affine);",
            "operands derived from the plan, in the layout [B, T, (rank,) shared, key/value].",
            "`step` is the cell's own step function."])
        forward = self.forward()
        imports = ["import torch", "",
                   "from reclang.runtime.chunk import "
                   + ("check_log_decay, chunk_affine" if self.checks else "chunk_affine"),
                   "from reclang.runtime.operands import operand"]
        return "\n".join(header + imports) + "\n\n\n" + forward + "\n\n\n" + \
            self.step_function() + "\n"


def preamble(first: str, needs: set[str], body: list[str]) -> list[str]:
    """The lines a forward over whole sequences opens with: the sizes (where `body`
    reads them), the tensor operands take their shape and dtype from, and what else
    its code reads (`needs`)."""
    lines = [f"_like = {first}"]
    if re.search(r"\b[BT]\b", "\n".join(x for x in body if not x.lstrip().startswith("#"))):
        lines.insert(0, f"B, T = {first}.shape[:2]")
    if "dtype" in needs:
        lines.append("_dtype, _device = _like.dtype, _like.device")
    elif "device" in needs:
        lines.append("_device = _like.device")
    if "complex" in needs:
        lines.append("_cdtype = torch.promote_types(_like.dtype, torch.complex64)")
    return lines


def epilogue(ir: IR, given: dict[int, str], lowering=EpilogueLowering,
             names: Names | None = None, needs: set | None = None) -> list[str]:
    """The output statements over all steps at once ([B, T, ...] values), with the
    nodes in `given` read from the named tensors instead of computed (`names`: those
    of the function it is part of; `needs`: updated with what the lines read)."""
    phase = phases(ir)
    place = {i: Place.ONCE if p == Phase.CONST else Place.HOIST for i, p in phase.items()}
    blocks = {p: [] for p in Place}
    lower = lowering(ir, place, blocks, given, names)
    needed = needed_statements(ir, given)
    for i in ir.stmts:
        node = ir.node(i)
        if i not in needed:
            continue
        place[i] = Place.HOIST
        value = lower.code(node.args[0], Place.HOIST)
        text = _broadcast(lower, value, node, Place.HOIST, place[node.args[0]])
        lower.emit(Place.HOIST, node, f"{py_name(node.arg)} = {text}")
    if needs is not None:
        needs |= lower.needs
    return blocks[Place.ONCE] + blocks[Place.HOIST]


def needed_statements(ir: IR, given: dict[int, str]) -> set[int]:
    """Statements the outputs need, not counting the nodes `given` replaces."""
    needed, stack = set(), [i for i in ir.stmts if ir.node(i).op == Op.OUT]
    while stack:
        i = stack.pop()
        node = ir.node(i)
        if i in given:
            continue
        if i in ir.stmts:
            if i in needed:
                continue
            needed.add(i)
        if node.op == Op.READ:
            stack.append(node.args[0])
        else:
            stack.extend(node.args)
    return needed


def _flat(s: ChunkState, side: tuple[str, ...], size: dict) -> str:
    """The reshape of an operand [B, T, rank, shared..., side...] to [B, T, rank, Hs, side
    flattened]: none when it has one shared and one side axis, the layout already."""
    if (len(s.shared), len(side)) == (1, 1):
        return ""
    shared, flat = (math.prod(size[a] for a in axes) for axes in (s.shared, side))
    return f".reshape(B, T, -1, {shared}, {flat})"


def _shape(sizes) -> str:
    """A shape as Python source: (), (4,), (4, 32)."""
    return f"({', '.join(map(str, sizes))}{',' if len(sizes) == 1 else ''})"
