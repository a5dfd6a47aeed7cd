"""The program of the cpu backend (backends/cpu_loop.py): the fused loop's lane form
(reclang/codegen/fused_loop.py) with its step and derivatives printed as C++ for
backends/templates/cpu_loop.cpp.jinja, compiled by reclang/runtime/cpp.py.

The C++ spellings are a view of the function table: a function's Triton spelling
(tl.sigmoid, _softplus, ...) names a scalar template of the same name in the C++
prelude (tl_sigmoid, _softplus, ...); `CPP_FUNCTIONS` lists those it defines."""

from __future__ import annotations

import hashlib
import math
import textwrap

from reclang.analysis.forms import Lanes
from reclang.ir import IR
from reclang.schedule import CpuLoopSchedule

from .fused_loop import FusedProgram, KernelCode, TritonPrinter, operand_groups, operands_import
from .render import render

# the Triton spellings the C++ prelude of cpu_loop.cpp.jinja defines (with tl. as tl_)
CPP_FUNCTIONS = ("tl.exp", "tl.log", "tl.sqrt", "tl.abs", "tl.floor", "tl.erf", "tl.sin",
                 "tl.cos", "tl.sigmoid", "_softplus", "_logsigmoid", "_tanh", "_sign",
                 "_heaviside", "_relu", "_clamp")

# the prelude's functions that remain calls of glibc's vector functions in float32; a
# step with one of them keeps glibc's exp too (cpu_gates.cpp.jinja, INLINE_EXP)
LIBMVEC_CALLS = ("tl_log", "tl_erf", "tl_sin", "tl_cos", "_softplus", "_logsigmoid", "_tanh")


class CppPrinter(TritonPrinter):
    """sympy scalar expressions as C++ over scalars of the kernel's type T (float or
    double): every constant is a T, so float32 equations stay in float32."""

    def __init__(self):
        super().__init__("")

    def _print_Function(self, expr):
        spelling = self.FUNCTIONS.get(expr.func)
        head = spelling.split("(")[0] if spelling is not None else None
        if head is None or head and head not in CPP_FUNCTIONS:  # "": arithmetic, C++ too
            raise NotImplementedError(f"cannot print {expr.func} in a C++ kernel")
        return spelling.replace("tl.", "tl_").format(*(self._print(a) for a in expr.args))

    def _print_Max(self, expr):
        return self._nested("tl_maximum", expr.args)

    def _print_Min(self, expr):
        return self._nested("tl_minimum", expr.args)

    def _print_Piecewise(self, expr):
        text = self._print(expr.args[-1][0])
        for value, cond in reversed(expr.args[:-1]):
            text = f"({self._print(cond)} ? {self._print(value)} : {text})"
        return text

    def _print_ITE(self, expr):  # a condition sympy made of a piecewise one
        cond, a, b = (self._print(x) for x in expr.args)
        return f"({cond} ? {a} : {b})"

    def _print_BooleanTrue(self, expr):
        return "true"

    def _print_BooleanFalse(self, expr):
        return "false"

    def _print_Not(self, expr):
        return f"!({self._print(expr.args[0])})"

    def _print_And(self, expr):
        return "(" + " && ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " || ".join(self._print(a) for a in expr.args) + ")"

    SQRT, ONE = "tl_sqrt", "T(1)"

    def _power(self, base, e) -> str:
        return f"std::pow({self._print(base)}, {self._print(e)})"

    @staticmethod
    def _number(value: float) -> str:
        if math.isnan(value):
            return "T(NAN)"
        if math.isinf(value):
            return "T(INFINITY)" if value > 0 else "T(-INFINITY)"
        return f"T({value!r})"

    def _print_Rational(self, expr):
        return self._number(float(expr))

    _print_Float = _print_Integer = _print_Rational

    def _print_Infinity(self, expr):
        return "T(INFINITY)"

    def _print_NegativeInfinity(self, expr):
        return "T(-INFINITY)"

    def _print_NaN(self, expr):
        return "T(NAN)"

    def _print_Exp1(self, expr):
        return self._number(math.e)

    def _print_Pi(self, expr):
        return self._number(math.pi)


class CppCode(KernelCode):
    """The cell's equations and their derivatives as C++ declarations."""

    def __init__(self, form, ir: IR):
        super().__init__(form, ir)
        self.printer = CppPrinter()

    def statements(self, named, prefix: str) -> list[str]:
        return [f"const T {line};"
                for line in super().statements(named, prefix)]

    def slots(self, about: str) -> dict:
        slots = super().slots(about)
        slots["forward"] = _comments_as_cpp(slots["forward"])
        slots["backward"] = _comments_as_cpp(slots["backward"])
        slots["state_of_product_list"] = slots["state_of_product"]
        slots["state_of_product"] = slots["state_of_product"].strip("[]")
        slots["N"], slots["heads"] = self.form.lanes, math.prod(self.form.heads)
        widths = [len(group) for group in cpu_groups(self.form, self.ir)] or [0]
        slots["widths"] = widths  # the operands' parts: forward's tensors, read in place
        slots["part_of"] = [p for p, k in enumerate(widths) for _ in range(k)]
        slots["slot_of"] = [i for k in widths for i in range(k)]
        slots["inline_exp"] = not any(f"{name}(" in slots[part] for name in LIBMVEC_CALLS
                                      for part in ("forward", "backward"))
        if not self.form.weights:  # units independent: the heads' units as one row, so
            # that a step reads them contiguously (Mamba's heads d of 16 units n each read
            # 64 bytes a step, 98 KB apart, and the kernel waited on memory)
            slots["N"], slots["heads"] = slots["N"] * slots["heads"], 1
        return slots


def cpu_groups(form, ir: IR) -> list[list]:
    """operand_groups for the cpu kernel: a cell without products makes each weighted sum
    alone (one F.linear each, the same FLOPs), so that each operand is a contiguous
    stream of its own: minGRU's kernel took 16.9 ms with its two operands interleaved in
    one matmul's output, 11.8-13.6 with them apart (B = 8, T = 4096, D = 512, Zen 4)."""
    groups = operand_groups(form, ir)
    return groups if form.weights else [[x] for group in groups for x in group]


class CpuProgram(FusedProgram):
    """forward() for the cpu kernel: the operands stay in the tensors that make them (a
    matmul's output, an input), a list of parts the kernel reads in place: no copy into
    one [B, T, O, HEADS, N] (HGRN's forward spent 60% of its time in that copy)."""

    PAD = "pad_packed_parts"

    def groups(self) -> list[list]:
        return cpu_groups(self.form, self.ir)

    def varying(self, unit: list[str], shape: str):
        f = self.form
        H, N = math.prod(f.heads), f.lanes
        parts = self.parts(unit, shape) or [f"_like.new_empty((B, T, 0, {H}, {N}))"]
        self.lines.append("_ops = [  # the operands' parts [B, T, k, HEADS, N]")
        self.lines += [f"    {p}," for p in parts]
        self.lines.append("]")


def _comments_as_cpp(text: str) -> str:
    """`# spec.rec:3: ...` lines as `// ...` (a backslash at the end of a C++ comment
    would continue it onto the next line)."""
    return "\n".join("// " + line[2:].rstrip("\\") if line.startswith("# ") else line
                     for line in text.split("\n"))


def python_literal(text: str) -> str:
    """The C++ source as a Python string literal: raw and triple-quoted, readable, when
    the text allows it."""
    if '"""' not in text and "\\" not in text and not text.endswith('"'):
        return 'r"""' + text + '"""'
    return repr(text)


IMPORTS = ["import torch", "", "from reclang.runtime.cpp import build",
           "from reclang.runtime.cpu_kernel import cpu_kernel"]


def cpu_source(ir: IR, form: Lanes, schedule: CpuLoopSchedule, summary: str) -> str:
    """The generated file of a nonlinear cell: its header, the C++ kernel as a string,
    the autograd Function that calls it (cpu_loop.py.jinja), forward and step."""
    program = CpuProgram(ir, form.lanes, schedule, summary)
    code = CppCode(form.lanes, ir)
    about = ("per unit, s_t = f(s_{t-1}, W s_{t-1}, o_t): the whole time loop in compiled "
             "C++ (from backends/templates/cpu_loop.cpp.jinja); the operands o and the "
             "weights W are computed before it")
    slots = {**code.slots(about), "schedule": schedule, "name": ir.name}
    cpp = render("cpu_loop.cpp.jinja", **slots)
    digest = hashlib.sha256(ir.source.text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    header = program.header([f"Spec sha256 {digest}; plan: {summary}.",
                             *textwrap.wrap("CPU backend, compiled loop: " + about, 88)])
    key = f"{ir.name}_{hashlib.sha256(cpp.encode()).hexdigest()[:16]}"
    wrapper = render("cpu_loop.py.jinja", cpp=python_literal(cpp), key=key, **slots)
    forward = program.forward()
    imports = [*IMPORTS, *operands_import(forward),
               "from reclang.runtime.packing import pad_packed_parts, unpad_packed"]
    return "\n".join(header + imports) + "\n\n\n" + wrapper + "\n\n" + forward + \
        "\n\n\n" + program.step_function() + "\n"
