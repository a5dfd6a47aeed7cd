"""The triton backend: generated Triton kernels. In this version: for cells whose plan
is `diag` or `diag-lti`, the gated scan (backends/gated_scan.py: the gates computed in
the kernel) where it applies, else the diagonal scan below; the matrix-state kernels
for `mat-decay` and `dplr` cells (below the diagonal scan's notes); the fused loop for
`nonlinear` cells (backends/fused.py).

Recurrence: h_t = a_t ⊙ h_{t-1} + b_t, as in the scan backend (reclang/backends/scan.py).
Algorithm:  the scan backend's program (the loop body on all tokens gives a and b, and
            the outputs from the previous states) with its scan done by a Triton
            kernel rendered from the hand-written template
            backends/templates/diag_scan.py.jinja: one program per (sequence, block of
            channels) walks the T steps with the carry in registers; the backward pass
            is the same kernel run in reverse on the gradients.
Cost:       reads a and b and writes h once (memory-bound); T sequential steps per
            program, B·S/BLOCK programs in parallel.
Numerics:   the carry has the states' dtype (float32 for bf16/fp16 inputs).
The generated file holds the kernel, its autograd Function and the forward and step
functions: one file to read. It runs on CUDA tensors, or on the CPU under Triton's
interpreter (TRITON_INTERPRET=1, how the tests run it without a GPU). First
derivatives only (the backward is `once_differentiable`).

mat-decay and dplr cells: the chunk backend's program (reclang/backends/chunk.py: the
same operands w, a, b, k, v, q per state, the same epilogue) with each state run by a
kernel rendered from backends/templates/mat_recurrent.py.jinja instead of chunk_affine:
Recurrence: S_t = (diag(exp(w_t)) + Σ_r a_{t,r} b_{t,r}ᵀ) S_{t-1} + Σ_r k_{t,r} v_{t,r}ᵀ,
            o_{t,r} = S_{t-1}ᵀ q_{t,r}.
Algorithm:  the recurrent form: one program per (sequence, head, tile of 32 values)
            keeps its [K, 32] tile of the state in registers for all T steps (the
            low-rank part reads bᵀ S over all keys, within the program); the backward
            runs the same kernel in reverse (dk, dv, da, dS_0) and forward again (dq,
            db), and the log decay's gradient is a reverse cumulative sum (no state
            stored).
Cost:       O(T·K·V) elementwise work per head, T dependent steps; reads each operand
            once per value tile. It runs low-rank parts of rank > 1 (DeltaProduct)
            and states with several input terms or readouts; the others run the
            chunk kernels below.
Numerics:   the carry is float32 at least; the transition is applied step by step, as
            in the sequential backend (no triangular solve, no exp of a cumulative sum).

States with one input term and one readout, and a low-rank part of rank 1 at most:
the chunk kernels of backends/templates/mat_chunk.py.jinja
(included in the same file), with the recurrent kernel's contract and autograd
Function:
Algorithm:  the chunkwise form. One kernel walks the chunks of each sequence and
            stores the state where each starts; two more compute the readouts of every
            chunk in parallel (over keys: the outputs and dv; over values: dk and dq),
            from that state and the decayed scores within the chunk. A delta rule's
            fed-back values u = W C_0 + U come from the WY form, W and U for all
            chunks in parallel. The backward is the same kernels on the gradients,
            time reversed, and again forward.
Cost:       O(T·C·K + T·K·V) per head, in matmuls; T / C dependent steps.
Numerics:   exponents are log decays between two steps of a chunk (≤ 0): key-wise
            decays use sub-chunks of 16 steps for that (the template's comment).
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

from reclang.errors import RecError
from reclang.ir import IR

from .chunk import ChunkProgram
from .scan import ScanProgram

TEMPLATES = Path(__file__).resolve().parent / "templates"


def missing_dependency() -> str:
    """Why the triton backend cannot be used here ("" when it can)."""
    import importlib.util

    for module in ("triton", "jinja2"):
        if importlib.util.find_spec(module) is None:
            return f"needs the package {module} (pip install 'reclang[triton]')"
    return ""


def render(template: str, **slots) -> str:
    """A kernel template filled in (jinja2; undefined slots are errors)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(template).render(**slots)


IMPORTS = ["import os", "", "import torch", "import triton", "import triton.language as tl"]


def assemble(program, template: str, about: list[str], forward: str, imports=(),
             slots=None) -> str:
    """A generated file: the header (spec, its hash, the plan, `about`), the imports,
    the kernel rendered from `template` (with `slots`), then `forward` and the cell's
    step function."""
    digest = hashlib.sha256(program.ir.source.text.encode("utf-8", "surrogatepass")).hexdigest()
    digest = digest[:16]  # surrogatepass: a spec's comment may hold a lone surrogate
    header = program.header([f"Spec sha256 {digest}; plan: {program.plan.summary}.", *about])
    kernel = render(template, **{"name": program.ir.name, **(slots or {})})
    return "\n".join(header + IMPORTS + list(imports)) + "\n\n\n" + kernel + "\n\n" + \
        forward + "\n\n\n" + program.step_function() + "\n"


class TritonScanProgram(ScanProgram):
    """The scan backend's program with the scan as a kernel defined in the same file."""

    title, scan_function = "Triton", "linear_scan"

    def __init__(self, ir: IR, plan=None, not_gated: str = ""):
        super().__init__(ir, plan)
        self.not_gated = not_gated  # why the gated scan does not apply

    def source(self) -> str:
        forward = self.function(
            "forward", f"Runs {self.ir.name} over whole sequences with the Triton scan: inputs "
            "[B, T, ...], states are the initial ones; returns (outputs, final states).",
            step=False)
        return assemble(self, "diag_scan.py.jinja", [
            "Triton backend: h' = a h + b elementwise; the scan is the kernel below (from",
            "backends/templates/diag_scan.py.jinja); the loop body runs on all tokens at once.",
            *textwrap.wrap(f"Not the gated scan: {self.not_gated}.", 88)], forward)


class TritonChunkProgram(ChunkProgram):
    """The chunk backend's program with each state run by the recurrent kernel."""

    pass_function, how, packed = "state_pass", "with the Triton kernel", True

    def source(self) -> str:
        return assemble(self, "mat_recurrent.py.jinja", [
            "Triton backend: each matrix state, S_t = (exp(w_t) + Σ a bᵀ) S_{t-1} + Σ k vᵀ,",
            "runs in the kernels below: in chunks (backends/templates/mat_chunk.py.jinja)",
            "where they apply, else step by step (mat_recurrent.py.jinja); its operands and",
            "the outputs are computed on all tokens at once, as in the chunk backend."],
            self.forward(),
            ["", "from reclang.backends.chunk import causal_pass, check_log_decay, operand"],
            slots=dict(chunk=self.chunk))


def generate(ir: IR, plan=None, chunk: int | None = None) -> str:
    """The generated source of the triton backend (kernel, forward and step); `chunk`:
    the steps per chunk of the chunk kernels (matrix states), a power of 2 ≥ 16."""
    from reclang.analysis.operands import chunk_operands
    from reclang.analysis.plan import make_plan

    plan = plan or make_plan(ir)
    if plan.form == "nonlinear":
        return _fused_source(ir, plan)
    if plan.form in ("diag", "diag-lti"):
        return _diagonal_source(ir, plan)
    if plan.form in ("mat-decay", "dplr"):
        if chunk is not None and (chunk < 16 or chunk & (chunk - 1)):
            raise RecError(f"chunk_size={chunk}: the triton backend's chunk kernels take a "
                           "power of 2 of at least 16 steps (tl.dot's smallest size)")
        program = TritonChunkProgram(ir, chunk_operands(ir, plan.states))
        program.plan, program.chunk = plan, chunk or 64
        return program.source()
    return TritonScanProgram(ir, plan).source()


def _diagonal_source(ir: IR, plan) -> str:
    """The gated scan (gates computed in the kernel) where it applies, else the
    diagonal scan of a and b, with the reason in its header."""
    from reclang.analysis.lanes import Unsupported

    from .gated_scan import gated_program

    about = ("h' = a h + b per channel, a and b the cell's equations of operands o and "
             "constants c, computed in the kernel (from backends/templates/"
             "gated_scan.py.jinja); the operands are computed before it")
    try:
        program, code = gated_program(ir, plan)
        slots = code.slots(about)  # printed here: a function without a Triton form falls back
    except (Unsupported, NotImplementedError) as why:
        return TritonScanProgram(ir, plan, str(why)).source()
    return assemble(program, "gated_scan.py.jinja", textwrap.wrap(
        "Triton backend, gated scan: " + about, 88), program.forward(),
        ["", "from reclang.backends.chunk import operand",
         "from reclang.backends.fused import constant"], slots=slots)


def _fused_source(ir: IR, plan) -> str:
    from .fused import fused_program

    program, code = fused_program(ir, plan)
    about = ("per unit, s_t = f(s_{t-1}, W s_{t-1}, o_t): the whole time loop in one kernel "
             "(from backends/templates/fused_loop.py.jinja); the operands o and the weights W "
             "are computed before it")
    return assemble(program, "fused_loop.py.jinja", textwrap.wrap(
        "Triton backend, fused loop: " + about, 88),
        program.forward(),
        ["", "from reclang.backends.chunk import operand", "from reclang.backends.fused import "
         "constant, pad_packed, unpad_packed"], slots=code.slots(about))
