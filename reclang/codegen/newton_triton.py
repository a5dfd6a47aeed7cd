"""The newton backend's Triton path (backends/newton.py): for a cell whose Jacobian is
diagonal, one Newton iteration as one kernel (backends/templates/newton_scan.py.jinja),
with f and J = ∂f/∂h printed from sympy as the gated scan prints its gates; the
operands computed before the kernels and the outputs from the states after them, as
the gated scan does (reclang/codegen/gated_scan.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from reclang.analysis.ir_to_forms import merge_operands
from reclang.analysis.lanes import LaneForm, Unsupported, lane_form
from reclang.errors import RecError
from reclang.ir import IR
from reclang.schedule import NewtonSchedule

from .chunk import StatesLowering, epilogue, states_var
from .fused_loop import KernelCode, gates_called
from .gated_scan import GatedScanProgram, layout
from .ir_to_torch import comment, number
from .loop import INDENT, py_name
from .printable import triton_refusal
from .render import missing_dependency, render

KERNEL = "the newton backend's Triton kernel"


def form(plan) -> LaneForm | str:
    """The lane form the kernels print (its gates inside, operands merged), or why the
    Triton path does not run the cell: it needs one real state whose units recur on
    themselves only (no weighted sum over the units), shaped (heads..., units)."""
    memo = plan._memo  # built once per cell, as the plan's other forms
    if "newton_triton" not in memo:
        memo["newton_triton"] = _form(plan)
    return memo["newton_triton"]


def _form(plan) -> LaneForm | str:
    ir = plan.ir
    why = missing_dependency()
    if why:
        return why
    if len(ir.states) != 1:
        return f"{plan.file}:{ir.states[1].loc}: {KERNEL} runs cells with one " \
            f"state; {ir.states[1].name} is a second"
    try:
        lanes = lane_form(ir, gates=True, lane_limit=None, outputs=False, kernel=KERNEL)
    except Unsupported as err:
        return str(err)
    if lanes.weights or tuple(ir.states[0].shape) != (*lanes.heads, lanes.lanes):
        return f"{plan.at(ir.states[0])}: {KERNEL} needs a diagonal Jacobian " \
            "(each unit of the state reading only its own unit)"
    if not lanes.operands:
        return f"{plan.at(ir.states[0])}: {KERNEL} needs a step that reads " \
            "an input or a param"
    merge_operands(lanes, ir)
    state = lanes.states[0]
    return triton_refusal(plan, [lanes.updates[state]], KERNEL) or lanes


class NewtonCode(KernelCode):
    """f and J = ∂f/∂h, and λ ∂f/∂(operands, constants), as the template's statements."""

    def __init__(self, form: LaneForm, ir: IR):
        super().__init__(form, ir)
        self.state = form.prev[form.states[0]]
        self.printer.like = str(self.state)  # a tile of the states' dtype: always there
        self.f = form.updates[form.states[0]]

    def slots(self, schedule: NewtonSchedule) -> dict:
        operands = self.form.operands
        ops = [str(o.symbol) for o in operands if o.time_varying]
        consts = [str(o.symbol) for o in operands if not o.time_varying]
        layouts = [(str(o.symbol), *layout(self.form, o.expr)[1:])
                   for o in operands if o.time_varying]
        lam = sympy.Symbol("lam", real=True)
        symbols = [o.symbol for o in operands if o.time_varying] + \
            [o.symbol for o in operands if not o.time_varying]
        derivatives = self.statements([(f"d_{x}", sympy.diff(lam * self.f, x))
                                       for x in symbols], "e")
        J = sympy.diff(self.f, self.state)
        linearized = self.statements([(n, e) for n, e in (("f", self.f), ("J", J))
                                      if e.free_symbols], "e")
        # a number alone would be a float32 scalar in Triton: a tile of the states' dtype
        linearized += [f"{n} = tl.full({self.state}.shape, {number(float(e))}, "
                       f"{self.state}.dtype)" for n, e in (("f", self.f), ("J", J))
                       if not e.free_symbols]
        return {"file": comment(self.file), "state": str(self.state), "ops": ops,
                "consts": consts, "layouts": layouts,
                "layout_table": str([(d, m) for _, d, m in layouts]),
                "args": ", ".join(ops + consts),
                "d_args": ", ".join(f"d_{x}" for x in ops + consts),
                "linearized": "\n".join(self.comments() + linearized),
                "derivatives": "\n".join(derivatives),
                "gates": gates_called(*linearized, *derivatives),
                "block_t": 64, "block_s": 32, "max_iter": schedule.max_iter,
                "tol": repr(schedule.tol), "damping": repr(schedule.damping)}


class NewtonTritonProgram(GatedScanProgram):
    """forward_triton(): the operands and constants in PyTorch, the Newton kernels, then
    the outputs from the states (the gated scan's epilogue)."""

    read = None  # the outputs are computed from the states, never in the kernel

    def forward_triton(self) -> str:
        f = self.form
        state, every, new, dims, lines, ops, consts = self.opening()
        S = math.prod(f.heads) * f.lanes
        lines += [(f"_h0 = {state}.reshape(-1, {S}).to(torch.promote_types({state}.dtype, "
                   "_dtype))"),
                  f"{every} = newton_scan([{', '.join(ops)}], [{', '.join(consts)}], _h0, T)",
                  f"{new} = {every}.reshape(B, T, {dims})"]
        lines += self.outputs(every, dims)
        lines.append(f"{state} = ({every}[:, -1] if T else _h0).reshape(-1, {dims})")
        if "dtype" not in self.sympy.needs:  # no torch.arange: no _device
            lines[2] = "_dtype = _like.dtype"
        lines = self.closing(lines, state)
        doc = (f'"""Runs {self.ir.name} over whole sequences by Newton\'s method in the '
               'Triton kernels above: inputs\n    [B, T, ...], states are the initial ones; '
               'returns (outputs, final states)."""')
        return "\n".join([self.signature("forward_triton"), INDENT + doc] +
                         [INDENT + line for line in lines])

    def outputs(self, every: str, dims: str) -> list[str]:
        """The output statements, reading the states (and the states before each step,
        if an output reads them) from `every`, the states after every step."""
        state = self.form.states[0]
        lines = epilogue(self.ir, {self.ir.update(state).id: states_var(self.names, state,
                                                                          "new")},
                         StatesLowering, self.names)
        if ("prev", state) not in self.names.memo:
            return lines
        return ["# the states before each step, for the outputs that read them",
                (f"{states_var(self.names, state, 'prev')} = torch.cat([_h0[:, None], "
                f"{every}[:, :-1]], 1).reshape(B, T, {dims})")] + lines


@dataclass
class Part:
    """What the newton backend's file holds for its Triton path: the imports (of
    packages, of reclang's runtime), the code (the kernels, their launcher,
    forward_triton), the lines at the top of forward that choose it, and the header's
    lines that say so."""
    about: list[str]
    packages: list[str]
    runtime: list[str]
    code: str
    dispatch: list[str]


def part(plan, schedule: NewtonSchedule) -> Part | None:
    """The Triton path of the newton backend's file, or None (the PyTorch path only):
    where the schedule allows it (`triton` not False) and the cell has a diagonal
    Jacobian the kernels print; with triton=True, a RecError where it does not."""
    if schedule.triton is False:
        return None
    lanes = form(plan)
    if isinstance(lanes, str):
        if schedule.triton:
            raise RecError(f"NewtonSchedule(triton=True): {lanes}")
        return None
    program = NewtonTritonProgram(plan.ir, lanes, schedule, plan.summary)
    kernels = render("newton_scan.py.jinja", name=plan.ir.name,
                     **NewtonCode(lanes, plan.ir).slots(schedule))
    packages = ["import triton", "import triton.language as tl"]
    runtime = ["from reclang.runtime import newton_triton", "from reclang.runtime.operands "
               + ("import constant, operand" if any(not o.time_varying for o in lanes.operands)
                  else "import operand")]
    ir = plan.ir
    args = [py_name(d.name) for d in (*ir.inputs, *ir.states)] + \
        [f"{py_name(d.name)}={py_name(d.name)}" for d in ir.params]
    first = py_name(ir.inputs[0].name)
    dispatch = [(f"if newton_triton.wanted({schedule.triton!r}, {first}):  # the Triton "
                "kernels below"),
                f"{INDENT}return forward_triton({', '.join(args)})"]
    code = kernels.rstrip("\n") + "\n\n\n" + program.forward_triton()
    when = {None: "on CUDA tensors", True: "always"}[schedule.triton]
    about = [f"Triton ({when}): forward_triton, one kernel per Newton iteration (a diagonal",
             "Jacobian), from backends/templates/newton_scan.py.jinja; the adjoint a kernel too."]
    return Part(about, packages, runtime, code, dispatch)
