"""The prologue: the derived leaves of reclang/hoist.py computed over whole sequences, in
PyTorch printed from the original IR, one generated file shared by every backend.

    prologue(inputs..., histories..., [counter], lengths, *, params...)
        -> ({derived leaf: value}, {carried state: its value after the call})

Inputs are [B, T, *dims] (a step is T = 1), `lengths` [B] or None: with lengths, a
history holds the last values before each sequence's end and the counter grows by the
length. Every value is computed at the HOIST layout [B, T, ...] (ONCE for params alone).
`lag(e, k)` extends e with its history ([B, K + T, ...]) and slices it; a window of
offsets (`lag(e, w)`, w bound by a sum) is an unfold of the same tensor, and a sum over
it with weights that do not vary in time one depthwise conv1d.
"""

from __future__ import annotations

import networkx as nx

from reclang.config import VERSION
from reclang.ir import IR, Op

from .ir_to_torch import ATOM, PRODUCT, Code, ExprLowering, Names, Place, align, comment, py_name
from .loop import INDENT, _broadcast


class PrologueLowering(ExprLowering):
    """ExprLowering with the two ops only the prologue prints: LAG and TIME."""

    def __init__(self, ir, place, blocks, names, histories: dict[int, str], time: str):
        super().__init__(ir, place, blocks, names)
        self.histories, self.time = histories, time

    def lower_time(self, node, at: Place) -> Code:
        return Code(self.time, ATOM, ())

    def lower_lag(self, node, at: Place) -> Code:
        extended = self.extended(node.args[0])
        offset = node.arg.offset
        if isinstance(offset, int):
            return Code(f"_lag.shifted({extended}, {offset}, T)", ATOM, node.axes)
        return Code(f"_lag.window({extended}, {node.arg.depth + 1}, T)", ATOM, node.axes)

    def lower_reduce(self, node, at: Place) -> Code:
        conv = self.convolution(node, at)
        return conv if conv is not None else super().lower_reduce(node, at)

    def convolution(self, node, at: Place) -> Code | None:
        """sum(w: weight * lag(e, w)) with a weight that does not vary in time (the
        short convolution of Mamba's and DeltaNet's blocks) as one depthwise conv1d over
        the extended sequence, rather than an einsum with its window of W copies."""
        kind, reduced = node.arg
        if kind != "sum" or len(reduced) != 1 or node.dtype == "complex":
            return None
        factors = self.product(node.args[0], at)
        lags = [f for f in factors if _is_window(self.ir.node(f), reduced[0])]
        if len(lags) != 1:
            return None
        lag = self.ir.node(lags[0])
        weights = [f for f in factors if f != lag.id]
        if any(self.place[f] != Place.ONCE or not set(self.ir.node(f).axes) <= set(lag.axes)
               for f in weights):
            return None
        weight = " * ".join(align(self.code(f, at), lag.axes).wrap(PRODUCT + 1)
                            for f in weights) or "1"
        return Code(f"_lag.convolved({self.extended(lag.args[0])}, {weight}, "
                    f"{lag.arg.depth + 1}, T)", ATOM, node.axes)

    def product(self, i: int, at: Place) -> list[int]:
        """The factors of a product computed in place (the nodes, not their code)."""
        node = self.ir.node(i)
        if node.op == Op.FN and node.arg == "mul" and self.place[i] >= at:
            return [f for a in node.args for f in self.product(a, at)]
        return [i]

    def extended(self, e: int) -> str:
        """The lagged expression e after its history, [B, K + T, ...], made once."""
        key = ("extended", self.histories[e])
        if key not in self.names.memo:
            node = self.ir.node(e)
            value = align(self.code(e, Place.HOIST), node.axes)
            if value.axes != node.axes:  # a constant: the same at every element
                value = Code(value.text, ATOM, node.axes)
            name = self.names.of(key, f"_{self.histories[e].strip('_')}_all")
            self.emit(Place.HOIST, node, f"{name} = _lag.extend("
                      f"{self.histories[e]}, {value.text}, T)")
        return self.names.memo[key]


def _is_window(node, w: str) -> bool:
    """lag(e, w) over the offsets 0 .. W-1 of a sum's index w, on the last axis."""
    return node.op == Op.LAG and node.arg.offset == w and node.axes[-1:] == (w,) and \
        node.sizes[-1] == node.arg.depth + 1


def source(ir: IR, prologue) -> str:
    """The prologue's generated module, for reclang/hoist.py's `Prologue` (not imported:
    the driver's layer is above this one)."""
    names = Names(ir)
    time, lengths = names.fresh("_t"), names.fresh("_lengths")
    place = _placements(ir)
    blocks = {p: [] for p in Place}
    histories = {i: py_name(h.name) for h in prologue.histories for i in h.nodes}
    counter = py_name("t") if prologue.time else None
    lower = PrologueLowering(ir, place, blocks, names, histories, time)
    names.memo["runtime", "lag"] = "_lag"  # imported at the top of the function
    for i in _statements(ir, prologue):
        node = ir.node(i)
        value = lower.code(node.args[0], place[i])
        text = _broadcast(lower, value, node, place[i], place[node.args[0]])
        lower.emit(place[i], node, f"{py_name(node.arg)} = {text}")
    derived = []
    for d in prologue.derived:  # each after the spec line it comes from
        var = names.fresh(f"_{d.name}")
        lower.emit(place[d.node], ir.node(d.node),
                   f"{var} = {lower.code(d.node, place[d.node]).text}")
        derived.append(f'"{d.name}": {var}')
    carried = [f'"{h.name}": _lag.history({lower.extended(h.nodes[0])}, {h.depth}, '
               f'{lengths})' for h in prologue.histories]
    if counter:
        carried.append(f'"t": _lag.advanced({counter}, T, {lengths})')
    first = py_name(ir.inputs[0].name)
    args = [py_name(d.name) for d in ir.inputs] + [py_name(h.name) for h in prologue.histories] + \
        ([counter] if counter else []) + [lengths]
    params = [py_name(d.name) for d in ir.params]
    lines = ["from reclang.runtime import lag as _lag", f"B, T = {first}.shape[:2]"]
    if "dtype" in lower.needs:
        lines.append(f"_dtype, _device = {first}.dtype, {first}.device")
    if "complex" in lower.needs:
        lines.append(f"_cdtype = torch.promote_types({first}.dtype, torch.complex64)")
    if counter:
        lines.append(f"{time} = _lag.steps({counter}, T)")
    lines += blocks[Place.ONCE] + blocks[Place.HOIST]
    lines += ["return (", INDENT + "{", *(2 * INDENT + f"{x}," for x in derived),
              INDENT + "}, {", *(2 * INDENT + f"{x}," for x in carried), INDENT + "})"]
    hypers = ", ".join(f"{k}={v!r}" for k, v in ir.hypers.items())
    file = ir.source.filename.rsplit("/", 1)[-1]
    signature = f"def prologue({', '.join(args + (['*'] + params if params else []))}):"
    doc = ('"""The values lag, t and subscript expressions give, over whole sequences '
           '[B, T, ...]; returns (derived leaves, carried states)."""')
    return "\n".join([
        f"# Generated by reclang {VERSION} {comment(f'from {file}: cell {ir.name}({hypers}).')}",
        "# Prologue: what lag(...), t and subscript expressions read, for every backend.",
        "import torch", "", "", signature, INDENT + doc,
        *(INDENT + line for line in lines)]) + "\n"


def _needed(ir: IR, prologue) -> set[int]:
    nodes = {d.node for d in prologue.derived} | {i for h in prologue.histories for i in h.nodes}
    return nodes | {a for i in nodes for a in nx.ancestors(ir.graph, i)}


def _statements(ir: IR, prologue) -> list[int]:
    """The lets and outputs the derived values read, in spec order."""
    needed = _needed(ir, prologue)
    return [i for i in ir.stmts if i in needed]


def _placements(ir: IR) -> dict[int, Place]:
    """HOIST for what varies in time (reads an input, t or a lag), ONCE for the rest."""
    place: dict[int, Place] = {}
    for i in nx.topological_sort(ir.graph):
        node = ir.node(i)
        varies = node.op in (Op.INPUT, Op.TIME, Op.LAG) or any(
            place.get(a) == Place.HOIST for a in node.args)
        place[i] = Place.HOIST if varies else Place.ONCE
    return place
