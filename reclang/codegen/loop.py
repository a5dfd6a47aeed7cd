"""The program of the sequential backend (backends/sequential.py): the loop over
time, with every state-free value hoisted before it; the base of every other program,
which reuse its step function and its function headers."""

from __future__ import annotations

from reclang.analysis.partition import Phase, phases
from reclang.config import VERSION
from reclang.ir import IR, Node, Op
from reclang.schedule import LoopSchedule, Schedule

from .ir_to_torch import ATOM, Code, ExprLowering, Names, Place, align, comment, py_name

INDENT = "    "


def placements(ir: IR, step: bool) -> dict[int, Place]:
    """Where each node is computed (see torch_expr's layout notes)."""
    phase = phases(ir)
    place: dict[int, Place] = {}
    for i, p in phase.items():
        place[i] = {Phase.CONST: Place.ONCE, Phase.CORE: Place.LOOP}.get(p, Place.LOOP)
    for i in ir.stmts:  # a state update is a step of the loop even when it reads no state
        if ir.node(i).op == Op.UPDATE or (step and ir.node(i).op == Op.OUT):
            place[i] = Place.LOOP
    if step:
        return place
    for i in ir.leaves.values():
        if ir.node(i).op == Op.INPUT:
            place[i] = Place.HOIST
    for i in ir.stmts:
        node = ir.node(i)
        if node.op == Op.OUT and phase[i] == Phase.CONST:
            place[i] = Place.HOIST  # an output that depends on no input still has [B, T]
        elif node.op != Op.UPDATE and phase[i] == Phase.PRELUDE and \
                _worth_hoisting(ir, i, phase, place, always=node.op == Op.OUT):
            _hoist(ir, i, phase, place)
        else:
            _hoist_below(ir, i, phase, place)
    return place


def _worth_hoisting(ir: IR, i: int, phase, place, always: bool = False) -> bool:
    """Hoist a state-free value over all steps unless it is an expansion (an outer
    product, a broadcast) larger than every tensor it is computed from, or it reads
    a value that stays in the loop."""
    sources = [ir.node(r).args[0] for r in _reads(ir, i)]
    if any(phase[s] == Phase.PRELUDE and place[s] != Place.HOIST for s in sources):
        return False
    largest = max((ir.node(s).numel for s in sources), default=1)
    return always or ir.node(i).numel <= largest


def _reads(ir: IR, i: int):
    """The READ nodes of the expression below node i (not past other statements)."""
    node = ir.node(i)
    if node.op == Op.READ:
        yield i
        return
    for a in node.args:
        yield from _reads(ir, a)


def _hoist(ir, i, phase, place):
    place[i] = Place.HOIST
    if ir.node(i).op == Op.READ:
        return  # what it reads is placed by its own statement
    for a in ir.node(i).args:
        if phase[a] == Phase.PRELUDE:
            _hoist(ir, a, phase, place)


def _hoist_below(ir, i, phase, place):
    """Keeps node i in the loop and hoists the largest worthwhile parts below it."""
    for a in ir.node(i).args:
        node = ir.node(a)
        if node.op in (Op.LET, Op.INPUT, Op.OUT, Op.UPDATE) or phase[a] == Phase.CONST:
            continue
        if phase[a] == Phase.CORE:
            _hoist_below(ir, a, phase, place)
        elif _worth_hoisting(ir, a, phase, place):
            _hoist(ir, a, phase, place)
        else:
            _hoist_below(ir, a, phase, place)


class Program:
    """Assembles the generated module: header, forward and step. Subclasses replace
    `loop` (what runs the steps of the forward pass) and `Lowering`."""

    Lowering = ExprLowering

    def __init__(self, ir: IR, schedule: Schedule | None = None, summary: str = ""):
        self.ir = ir
        self.file = ir.source.filename.rsplit("/", 1)[-1]
        self.schedule = schedule or LoopSchedule()
        self.summary = summary  # the plan's one line, for the Triton files' headers

    def signature(self, name: str) -> str:
        ins = [py_name(d.name) for d in self.ir.inputs]
        states = [py_name(d.name) for d in self.ir.states]
        params = [py_name(d.name) for d in self.ir.params]
        args = ", ".join(ins + states + (["*"] + params if params else []))
        return f"def {name}({args}):"

    def packed_signature(self, doc: str) -> tuple[str, str]:
        """forward's signature and docstring (`doc`, a quoted line) taking
        `cu_seqlens=None`: sequences packed in a batch of one, as flash-linear-attention."""
        signature = self.signature("forward")
        signature = signature[:-2] + (", " if "*" in signature else ", *, ") + \
            "cu_seqlens=None):"
        doc = doc[:-3] + ('\n    With cu_seqlens ([N + 1] offsets), N sequences packed in '
                          'a batch of one; states [N, ...]."""')
        return signature, doc

    def body(self, step: bool) -> list[str]:
        blocks, outputs, lower = self.lowered(step)
        first = py_name(self.ir.inputs[0].name)
        lines = self.defines(lower, first) + blocks[Place.ONCE]
        if step:
            lines += blocks[Place.LOOP]
        else:
            lines += self.loop(first, blocks, outputs, lower.unbound)
        lines.append(self.returns(outputs))
        return lines

    def lowered(self, step: bool):
        """The statements lowered into their places' blocks: (the blocks, the outputs
        with their places, the lowering)."""
        place = placements(self.ir, step)
        blocks = {p: [] for p in Place}
        self.names = Names(self.ir)
        lower = self.Lowering(self.ir, place, blocks, self.names)
        live = _live(self.ir)
        outputs = []
        for i in self.ir.stmts:
            node = self.ir.node(i)
            if i not in live:
                continue
            home = place[i]
            value = lower.code(node.args[0], home)
            text = _broadcast(lower, value, node, home, place[node.args[0]])
            lower.emit(home, node, f"{py_name(node.arg)} = {text}")
            if node.op == Op.OUT:
                outputs.append((node, home))
        return blocks, outputs, lower

    @staticmethod
    def defines(lower, first: str) -> list[str]:
        """The lines that define what the lowered code needs, from the tensor `first`."""
        lines = []
        if lower.needs & {"dtype"}:
            lines.append(f"_dtype, _device = {first}.dtype, {first}.device")
        if "complex" in lower.needs:
            # promote_types, not dtype.to_complex(), which torch.compile cannot trace
            lines.append(f"_cdtype = torch.promote_types({first}.dtype, torch.complex64)")
        if "batch" in lower.needs:
            lines.append(f"B = {first}.shape[0]")
        return lines

    def loop(self, first: str, blocks, outputs, unbound) -> list[str]:
        lines = [f"T = {first}.shape[1]"] + blocks[Place.HOIST]
        if unbound:
            lines.append("# the sequences the loop reads, split into steps")
        lines += [f"{steps} = {var}.unbind(1)" for var, steps in unbound.items()]
        stepwise = [(py_name(n.arg), self.names.fresh(f"_{py_name(n.arg)}_steps"))
                    for n, home in outputs if home == Place.LOOP]
        lines += [f"{steps} = []" for _, steps in stepwise]
        lines.append("for t in range(T):")
        body = blocks[Place.LOOP] + [f"{steps}.append({y})" for y, steps in stepwise]
        lines += [INDENT + line for line in body or ["pass"]]
        lines += [f"{y} = torch.stack({steps}, dim=1)" for y, steps in stepwise]
        return lines

    def returns(self, outputs) -> str:
        outs = ", ".join(f'"{n.arg}": {py_name(n.arg)}' for n, _ in outputs)
        states = ", ".join(f'"{d.name}": {py_name(d.name)}' for d in self.ir.states)
        return f"return {{{outs}}}, {{{states}}}"

    def function(self, name: str, doc: str, step: bool) -> str:
        lines = [self.signature(name), INDENT + f'"""{doc}"""']
        lines += [INDENT + line for line in self.body(step)]
        return "\n".join(lines)

    def header(self, description: list[str]) -> list[str]:
        """The generated file's opening comment: origin, then what the backend does."""
        hypers = ", ".join(f"{k}={v!r}" for k, v in self.ir.hypers.items())
        origin = comment(f"from {self.file}: cell {self.ir.name}({hypers}).")
        return [f"# Generated by reclang {VERSION} {origin}"] + \
            [f"# {comment(line)}" for line in description] + \
            [f"# schedule: {comment(self.schedule.describe())}"]

    def step_function(self) -> str:
        return self.function("step", f"One step of {self.ir.name}: inputs [B, ...]; "
                             "returns (outputs, new states).", step=True)

    def source(self) -> str:
        header = self.header([
            "Sequential backend: a loop over time; state-free values are computed before it.",
            "Each statement follows a comment with the spec line it comes from.",
            "Layout: inputs [B, T, ...], states [B, ...], params as declared."])
        forward = self.function(
            "forward", f"Runs {self.ir.name} over whole sequences: inputs [B, T, ...], "
            "states are the initial ones; returns (outputs, final states).", step=False)
        return "\n".join(header + ["import torch"]) + "\n\n\n" + forward + "\n\n\n" + \
            self.step_function() + "\n"


def _live(ir: IR) -> set[int]:
    """Statements that contribute to an output or a state update."""
    roots = [i for i in ir.stmts if ir.node(i).op in (Op.OUT, Op.UPDATE)]
    live = set(roots)
    for r in roots:
        live |= {a for a in _ancestors(ir, r)}
    return {i for i in ir.stmts if i in live}


def _ancestors(ir: IR, i: int):
    stack, seen = [i], set()
    while stack:
        n = stack.pop()
        for a in ir.node(n).args:
            if a not in seen:
                seen.add(a)
                stack.append(a)
    return seen


def _broadcast(lower: ExprLowering, code: Code, node: Node, home: Place,
               value_home: Place) -> str:
    """A statement's value, with its axes in the order of the left-hand side and
    expanded along left-hand indices that the right does not use (and along B, T when
    a loop or sequence value is computed from params alone)."""
    target = node.axes
    if code.const and home == Place.ONCE and not node.sizes:
        return code.text
    if code.const:
        lower.needs |= {"dtype", "batch"}
        prefix = {Place.ONCE: "", Place.HOIST: "B, T, ", Place.LOOP: "B, "}[home]
        shape = (prefix + ", ".join(map(str, node.sizes))).rstrip(", ")
        return f"torch.full(({shape},), {code.text}, dtype=_dtype, device=_device)"
    aligned = align(code, target)
    if value_home == Place.ONCE and home != Place.ONCE:
        lower.needs.add("batch")
        prefix = "B, T, " if home == Place.HOIST else "B, "
        return f"{aligned.wrap(ATOM)}.expand({prefix}{', '.join(map(str, node.sizes))})"
    if set(code.axes) == set(target):
        return aligned.text
    sizes = ", ".join("-1" if a in code.axes else str(s) for a, s in zip(target, node.sizes))
    x = aligned.wrap(ATOM)
    return f"{x}.expand(*{x}.shape[:-{len(target)}], {sizes})"
