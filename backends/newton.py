"""The newton backend for `nonlinear` cells (LSTM, GRU, Elman, IndRNN, ParaRNN's cells):
the whole sequence solved at once by Newton's method, as DEER and ParaRNN do.

Recurrence: h_t = f(h_{t-1}, x_t), t = 0 .. T-1, the cell's step as the spec says.
Algorithm:  Newton on the T equations together (reclang/runtime/newton.py): at every
            iteration, f and its Jacobian J_t = ∂f/∂h_{t-1} on all B·T tokens at once
            (the step's state-dependent part, `core`; its state-free part, `prelude`,
            such as W x + b, runs once per call): for a cell with a lane form, J's
            entries are the lane form's sympy derivatives printed with the step
            (reclang/codegen/newton_torch.py: f and J in one pass, `linearized`);
            otherwise reverse-mode derivatives of the core at the basis vectors of
            one block. Then the linear recurrence
            h_t = J_t h_{t-1} + (f − J_t h^k_{t-1}) by the parallel scan of
            reclang/runtime/scan.py: elementwise for a diagonal Jacobian, with small
            matrices for a block-diagonal one (an LSTM whose recurrence is diagonal: a
            2x2 block per unit, coupling h and c; per head for heads), with one matrix
            for a dense one. After k iterations the first k steps are exact; past
            `max_iter` the rest run one by one. The outputs are the step on all
            tokens at the solution (the solution itself where they are states).
            Backward by implicit differentiation: the adjoint recurrence at the
            solution, the same scan in reverse. Packed sequences (cu_seqlens, and
            `lengths`, which the module packs) run as one stream in one solve.
Cost:       per iteration the printed step and its derivatives on all tokens (by
            reverse mode: the step and its backward pass on m copies of all tokens,
            m the Jacobian's block size, `rows` at a time) and a scan of O(B·T·m³)
            (m = 1: O(B·T·state)); a few iterations for contracting cells, up to T in
            the worst case.
Numerics:   converged to eps^(3/4) of the dtype (the iterate after that is at about
            eps^(3/2)); diverging iterates (inf, nan) stop the iteration, and the steps
            from the first that moved run one by one, so the result is the loop's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from reclang.analysis.lanes import LaneForm, Unsupported, lane_form
from reclang.analysis.partition import Phase, phases
from reclang.codegen import newton_torch as printing
from reclang.codegen import newton_triton
from reclang.codegen.fused_loop import operands_import
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
    are blocks the step never mixes, each block holds `size` values (all states).
    `printed`: the lane form whose sympy derivatives are printed as J's entries (None:
    J's rows by reverse mode; `how` says why)."""
    kind: str        # diagonal | block-diagonal | dense
    block_dims: int
    size: int
    why: str
    printed: LaneForm | None = None
    how: str = ""

    def describe(self) -> str:
        blocks = "" if self.kind == "diagonal" else f" ({self.size}x{self.size} blocks)"
        return f"{self.kind} Jacobian{blocks}: {self.why}; {self.how}"


def jacobian(plan) -> Jacobian:
    """The Jacobian's structure, from the lane form (reclang/analysis/lanes.py): a unit
    that reads only its own unit of every state has a block of one value per state; a
    weighted sum over the units mixes them within a head; a cell without a lane form
    is dense over all its states."""
    memo = plan._memo  # the plan's memo of forms: built once per cell, as they are
    if "newton" not in memo:
        memo["newton"] = _structure(plan)
    return memo["newton"]


REVERSE = "its rows by reverse mode"


def _structure(plan) -> Jacobian:
    ir = plan.ir
    try:
        lanes = lane_form(ir, lane_limit=None, outputs=False, kernel="the lane form")
    except Unsupported as err:
        size = sum(math.prod(d.shape) for d in ir.states)
        return Jacobian("dense", 0, size, f"over all {size} state values ({err})",
                        how=f"{REVERSE} (no lane form)")
    printed, how = _printable(plan)
    states, shape = ", ".join(lanes.states), ir.states[0].shape
    if not lanes.weights:
        kind = "diagonal" if len(lanes.states) == 1 else "block-diagonal"
        return Jacobian(kind, len(shape), len(lanes.states),
                        f"each unit of {states} reads only its own unit of every state",
                        printed, how)
    mixed = ", ".join(sorted({w.state for w in lanes.weights}))
    size = len(lanes.states) * lanes.lanes
    where = "within each head the" if lanes.heads else "all"
    kind = "block-diagonal" if lanes.heads else "dense"
    return Jacobian(kind, len(lanes.heads), size,
                    f"a weighted sum over the units of {mixed} mixes {where} {lanes.lanes} "
                    f"units of {states}", printed, how)


def _printable(plan) -> tuple[LaneForm | None, str]:
    """The lane form with the outputs (what the printed step computes), if its step and
    the derivatives print as PyTorch (the code kept in the plan's memo), and how J's
    entries are found, in words."""
    try:
        form = lane_form(plan.ir, lane_limit=None, kernel="the printed Jacobian")
        plan._memo["newton code"] = printing.step_code(plan.ir, form)
    except (Unsupported, NotImplementedError) as err:  # NotImplementedError: no spelling
        return None, f"{REVERSE} ({err})"
    return form, "its entries printed from sympy.diff of the lane form, with the step"


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
        if schedule.derivatives == "sympy" and jac.printed is None:
            raise RecError(f"{plan.at(plan.states[0])}: NewtonSchedule(derivatives='sympy'): "
                           f"the newton backend finds {jac.how}", plan.ir.source)
        printed = None if schedule.derivatives == "reverse" else jac.printed
        return _source(plan, schedule, jac, quasi, adjoint, printed)


def _source(plan, schedule, jac: Jacobian, quasi: bool, adjoint: str, printed) -> str:
    ir = plan.ir
    program = _Program(ir, schedule)
    method = "quasi-Newton (the Jacobian's diagonal)" if quasi else "Newton"
    how = "its entries printed from sympy.diff of the lane form, with the step" if printed \
        else f"{REVERSE} through the core"
    parts = ("prelude: the lane form's time-varying operands on all tokens, once; linearized:",
             "the step and its derivatives on tokens, what every iteration evaluates; core:",
             "the step on tokens, for the outputs and the backward; step: one step, for",
             "`module.step`.") if printed else (
        "prelude: the state-free values on all tokens, once; core: the rest of the step,",
        "on tokens, what every iteration evaluates; step: one step, for `module.step`.")
    triton = newton_triton.part(plan, schedule)  # None: the PyTorch path only
    header = program.header([
        f"Newton backend: the whole sequence by {method}, each iteration a parallel scan",
        f"(reclang/runtime/newton.py); plan: {plan.summary}.",
        f"Structure: {jac.kind}; J: {how}.",
        f"Adjoint (backward): {'a scan' if adjoint == 'scan' else 'one vjp per step'}.",
        *parts, *(triton.about if triton else [])])
    shapes = tuple(d.shape for d in ir.states)
    names = tuple(d.name for d in ir.states)
    solver = (f"SOLVER = newton.Solver(newton.Layout({shapes!r}, {jac.block_dims}), {names!r}, "
              f"max_iter={schedule.max_iter}, tol={schedule.tol!r}, quasi={quasi}, "
              f"damping={schedule.damping!r}, adjoint={adjoint!r}, rows={schedule.rows})")
    xs = "".join(f"{py_name(d.name)}, " for d in ir.inputs)
    h0 = "".join(f"{py_name(d.name)}, " for d in ir.states)
    params = ", ".join(f'"{py_name(d.name)}": {py_name(d.name)}' for d in ir.params)
    signature, doc = program.packed_signature(
        f'"""Runs {ir.name} over whole sequences by Newton\'s method: inputs '
        '[B, T, ...], states are the initial ones; returns (outputs, final states)."""')
    extra = ""
    if printed:
        step = plan._memo["newton code"]
        steps = (step.prelude, step.core, step.linearized)
        extra = "linearized=linearized, " + ("" if step.outputs is None else
                                             f"outputs={step.outputs!r}, ")
    else:
        steps = program.split()
    forward = "\n".join([
        signature, INDENT + doc,
        *(INDENT + line for line in _dispatch(triton)),
        INDENT + f"return SOLVER.run(prelude, core, ({xs}), ({h0}), {{{params}}}, "
        f"{extra}cu_seqlens=cu_seqlens)"])
    functions = [solver, forward, *steps, program.step_function(),
                 *([triton.code] if triton else [])]
    code = "\n".join(functions)
    imports = ["import torch", *(triton.packages if triton else []), "",
               "from reclang.runtime import newton",
               *(line for line in (triton.runtime if triton else [])
                 if not line.startswith("from reclang.runtime.operands")),
               *operands_import(code)]
    return "\n".join(header + imports) + "\n\n\n" + "\n\n\n".join(functions) + "\n"


def _dispatch(triton) -> list[str]:
    """The Triton path's choice at the top of forward, for whole sequences: packed ones
    (cu_seqlens) take the PyTorch path's one solve, on any device."""
    if triton is None:
        return []
    return ["if cu_seqlens is None:  # packed sequences: the one solve below",
            *(INDENT + line for line in triton.dispatch)]


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
