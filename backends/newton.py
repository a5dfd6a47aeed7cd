"""The newton backend for `nonlinear` cells (LSTM, GRU, Elman, IndRNN, ParaRNN's cells):
the whole sequence solved at once by Newton's method, as DEER and ParaRNN do.

Recurrence: h_t = f(h_{t-1}, x_t), t = 0 .. T-1, the cell's step as the spec says.
Algorithm:  Newton on the T equations together (reclang/runtime/newton.py): at every
            iteration, f and its Jacobian J_t = ∂f/∂h_{t-1} on all B·T tokens at once
            (the step's state-dependent part, `core`, and reverse-mode derivatives of
            it at the basis vectors of one block; its state-free part, `prelude`,
            such as W x + b, runs once per call), then the linear recurrence
            h_t = J_t h_{t-1} + (f − J_t h^k_{t-1}) by the parallel scan of
            reclang/runtime/scan.py: elementwise for a diagonal Jacobian, with small
            matrices for a block-diagonal one (an LSTM whose recurrence is diagonal: a
            2x2 block per unit, coupling h and c; per head for heads), with one matrix
            for a dense one. After k iterations the first k steps are exact; past
            `max_iter` the rest run one by one. The outputs are the step on all
            tokens at the solution. Backward by implicit differentiation: the adjoint
            recurrence at the solution, the same scan in reverse.
Cost:       per iteration the step and its backward pass on m copies of all tokens
            (m: the Jacobian's block size; `rows` at a time) and a scan of O(B·T·m³)
            (m = 1: O(B·T·state)); a few iterations for contracting cells, up to T in the worst case.
Numerics:   converged to eps^(3/4) of the dtype (the iterate after that is at about
            eps^(3/2)); diverging iterates (inf, nan) stop the iteration, and the steps
            from the first that moved run one by one, so the result is the loop's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from reclang.analysis.lanes import Unsupported, lane_form
from reclang.analysis.partition import Phase, phases
from reclang.codegen import newton_triton
from reclang.codegen.ir_to_torch import Place
from reclang.codegen.loop import INDENT, Program
from reclang.codegen.names import py_name
from reclang.errors import RecError
from reclang.functions import FUNCTIONS
from reclang.ir import Op
from reclang.schedule import NewtonSchedule

from .base import Backend, register

DENSE_LIMIT = 64  # values per block of the Jacobian: the scan multiplies m x m matrices


@dataclass(frozen=True)
class Jacobian:
    """The structure of ∂f/∂h the backend uses: `block_dims` leading axes of every state
    are blocks the step never mixes, each block holds `size` values (all states)."""
    kind: str        # diagonal | block-diagonal | dense
    block_dims: int
    size: int
    why: str

    def describe(self) -> str:
        blocks = "" if self.kind == "diagonal" else f" ({self.size}x{self.size} blocks)"
        return f"{self.kind} Jacobian{blocks}: {self.why}"


def jacobian(plan) -> Jacobian:
    """The Jacobian's structure, from the lane form (reclang/analysis/lanes.py): a unit
    that reads only its own unit of every state has a block of one value per state; a
    weighted sum over the units mixes them within a head; a cell without a lane form
    is dense over all its states."""
    memo = plan._memo  # the plan's memo of forms: built once per cell, as they are
    if "newton" not in memo:
        memo["newton"] = _structure(plan)
    return memo["newton"]


def _structure(plan) -> Jacobian:
    ir = plan.ir
    try:
        lanes = lane_form(ir, lane_limit=None, outputs=False, kernel="the lane form")
    except Unsupported as err:
        size = sum(math.prod(d.shape) for d in ir.states)
        return Jacobian("dense", 0, size, f"over all {size} state values ({err})")
    states, shape = ", ".join(lanes.states), ir.states[0].shape
    if not lanes.weights:
        kind = "diagonal" if len(lanes.states) == 1 else "block-diagonal"
        return Jacobian(kind, len(shape), len(lanes.states),
                        f"each unit of {states} reads only its own unit of every state")
    mixed = ", ".join(sorted({w.state for w in lanes.weights}))
    size = len(lanes.states) * lanes.lanes
    where = "within each head the" if lanes.heads else "all"
    kind = "block-diagonal" if lanes.heads else "dense"
    return Jacobian(kind, len(lanes.heads), size,
                    f"a weighted sum over the units of {mixed} mixes {where} {lanes.lanes} "
                    f"units of {states}")


class Newton(Backend):
    name, forms, kind, schedules = "newton", ("nonlinear",), None, NewtonSchedule

    def form(self, plan):
        return jacobian(plan)

    def refusal(self, plan) -> str:
        """A complex state (the scans' Jacobians are real), or a function of the step
        without a derivative (Newton needs ∂f/∂h), at its use."""
        for d in plan.ir.states:
            if d.dtype != "real":
                return f"{plan.file}:{d.loc}: state {d.name} is complex; the newton " \
                    "backend runs real states"
        phase = phases(plan.ir)
        for i in sorted(plan.ir.graph.nodes):
            node = plan.ir.node(i)
            if node.op == Op.FN and phase[i] == Phase.CORE and \
                    FUNCTIONS[node.arg].derivative is None:
                return f"{plan.file}:{node.loc}: {node.arg} has no derivative in the " \
                    "function table; the newton backend needs ∂f/∂h of the step"
        return ""

    def runs(self, plan) -> str:
        jac = jacobian(plan)
        text = f"runs nonlinear: Newton with a {jac.describe()}"
        if jac.size > DENSE_LIMIT:
            text += f"; quasi-Newton by default (its diagonal: blocks above {DENSE_LIMIT} " \
                "values are too large for the dense scan)"
        return text

    def default_schedule(self, plan, device: str = "cpu") -> NewtonSchedule:
        return NewtonSchedule()

    def lower(self, plan, schedule: NewtonSchedule) -> str:
        jac = jacobian(plan)
        quasi = schedule.jacobian == "diagonal" or (
            schedule.jacobian is None and jac.size > DENSE_LIMIT)
        if jac.size > DENSE_LIMIT and not quasi:
            raise RecError(f"{plan.at(plan.states[0])}: the newton backend's exact Jacobian "
                           f"has {jac.size}x{jac.size} blocks ({jac.why}), too large for the "
                           f"dense scan (limit {DENSE_LIMIT}): use quasi-Newton, "
                           "NewtonSchedule(jacobian='diagonal')", plan.ir.source)
        adjoint = "loop" if jac.size > DENSE_LIMIT else "scan"
        return _source(plan, schedule, jac, quasi, adjoint)


def _source(plan, schedule, jac: Jacobian, quasi: bool, adjoint: str) -> str:
    ir = plan.ir
    program = _Program(ir, schedule)
    method = "quasi-Newton (the Jacobian's diagonal)" if quasi else "Newton"
    triton = newton_triton.part(plan, schedule)  # None: the PyTorch path only
    header = program.header([
        f"Newton backend: the whole sequence by {method}, each iteration a parallel scan",
        f"(reclang/runtime/newton.py); plan: {plan.summary}.",
        f"Structure: {jac.describe()}.",
        f"Adjoint (backward): {'a scan' if adjoint == 'scan' else 'one vjp per step'}.",
        "prelude: the state-free values on all tokens, once; core: the rest of the step,",
        "on tokens, what every iteration evaluates; step: one step, for `module.step`.",
        *(triton.about if triton else [])])
    shapes = tuple(d.shape for d in ir.states)
    names = tuple(d.name for d in ir.states)
    solver = (f"SOLVER = newton.Solver(newton.Layout({shapes!r}, {jac.block_dims}), {names!r}, "
              f"max_iter={schedule.max_iter}, tol={schedule.tol!r}, quasi={quasi}, "
              f"damping={schedule.damping!r}, adjoint={adjoint!r}, rows={schedule.rows})")
    xs = "".join(f"{py_name(d.name)}, " for d in ir.inputs)
    h0 = "".join(f"{py_name(d.name)}, " for d in ir.states)
    params = ", ".join(f'"{py_name(d.name)}": {py_name(d.name)}' for d in ir.params)
    forward = "\n".join([
        program.signature("forward"),
        INDENT + f'"""Runs {ir.name} over whole sequences by Newton\'s method: inputs '
        '[B, T, ...], states are the initial ones; returns (outputs, final states)."""',
        *(INDENT + line for line in (triton.dispatch if triton else [])),
        INDENT + f"return SOLVER.run(prelude, core, ({xs}), ({h0}), {{{params}}})"])
    functions = [solver, forward, *program.split(), program.step_function(),
                 *([triton.code] if triton else [])]
    imports = ["import torch", *(triton.packages if triton else []), "",
               "from reclang.runtime import newton", *(triton.runtime if triton else [])]
    return "\n".join(header + imports) + "\n\n" + "\n\n\n".join(functions) + "\n"


class _Lowering(Program.Lowering):
    """The sequential loop's lowering, with the loop's body as a function on tokens: a
    sequence the loop reads at step t is an argument of the core, read whole."""

    def at_step(self, var: str) -> str:
        if var not in self.unbound:
            self.unbound[var] = self.names.fresh(f"_{var.strip('_')}_t")
        return self.unbound[var]


class _Program(Program):
    Lowering = _Lowering

    def split(self) -> tuple[str, str]:
        """The sequential loop's forward as two functions: `prelude` (what it computes
        before the loop, on inputs [B, T, ...]) returns its outputs and the sequences
        the loop reads; `core` (the loop's body) takes those on tokens [N, ...]."""
        blocks, outputs, lower = self.lowered(step=False)
        ir, first = self.ir, py_name(self.ir.inputs[0].name)
        before = [(n, h) for n, h in outputs if h != Place.LOOP]
        seqs = "".join(f"{var}, " for var in lower.unbound)
        ins = [py_name(d.name) for d in ir.inputs]
        params = [py_name(d.name) for d in ir.params]
        star = ["*"] + params if params else []
        body = [*blocks[Place.HOIST], "return {" + ", ".join(
            f'"{n.arg}": {py_name(n.arg)}' for n, _ in before) + f"}}, ({seqs})"]
        body = _needed(blocks[Place.ONCE] + [f"T = {first}.shape[1]"], body) + body
        prelude = [f"def prelude({', '.join(ins + star)}):",
                   ('"""The state-free values: inputs [B, T, ...]; returns (the outputs '
                    'computed here, the sequences the core reads)."""'),
                   *_needed(self.defines(lower, first), body), *body]
        states = [py_name(d.name) for d in ir.states]
        body = [*blocks[Place.LOOP], self.returns([(n, h) for n, h in outputs
                                                   if h == Place.LOOP])]
        core = [f"def core({', '.join(list(lower.unbound.values()) + states + star)}):",
                ('"""The step on tokens [N, ...], given the prelude\'s sequences at them; '
                 'returns (the other outputs, new states)."""'),
                *_needed(self.defines(lower, states[0]) + blocks[Place.ONCE], body), *body]
        return tuple(f[0] + "\n" + "\n".join(INDENT + line for line in f[1:])
                     for f in (prelude, core))


def _needed(lines: list[str], rest: list[str]) -> list[str]:
    """The assignments among `lines` (with their origin comments) that `rest` or a kept
    later one reads: the prelude and the core share the blocks of param-only values."""
    kept, reads = [], "\n".join(rest)
    for line in reversed(lines):
        names = line.split(" = ", 1)[0].split(", ")
        if line.startswith("#"):
            if kept and not kept[-1].startswith("#"):
                kept.append(line)
        elif any(re.search(rf"\b{re.escape(n)}\b", reads) for n in names):
            kept.append(line)
            reads += "\n" + line
    return kept[::-1]


register(Newton())
