"""The programs of the triton backends around their kernels: the scan program with the
diagonal scan kernel, the chunk program with the matrix-state kernels."""

from __future__ import annotations

import textwrap

from reclang.analysis.forms import Diag
from reclang.ir import IR
from reclang.schedule import TritonMatrixSchedule, TritonScanSchedule

from .chunk import ChunkProgram
from .render import assemble
from .scan import ScanProgram


class TritonScanProgram(ScanProgram):
    """The scan backend's program with the scan as a kernel defined in the same file."""

    title, scan_function = "Triton", "linear_scan"

    def __init__(self, ir: IR, form: Diag, schedule: TritonScanSchedule, summary: str,
                 not_gated: str):
        super().__init__(ir, form, schedule, summary)
        self.not_gated = not_gated  # why the gated scan does not apply

    def source(self) -> str:
        forward = self.function(
            "forward", f"Runs {self.ir.name} over whole sequences with the Triton scan: inputs "
            "[B, T, ...], states are the initial ones; returns (outputs, final states).",
            step=False)
        return assemble(self, "diag_scan.py.jinja", [
            "Triton backend: h' = a h + b elementwise; the scan is the kernel below (from",
            "backends/templates/diag_scan.py.jinja); the loop body runs on all tokens at once.",
            *textwrap.wrap(f"Not the gated scan: {self.not_gated}.", 88)], forward,
            slots=dict(schedule=self.schedule))


class TritonChunkProgram(ChunkProgram):
    """The chunk backend's program with each state run by the recurrent kernel."""

    pass_function, how, packed = "state_pass", "with the Triton kernel", True
    schedule: TritonMatrixSchedule

    def source(self) -> str:
        return assemble(self, "mat_recurrent.py.jinja", [
            "Triton backend: each matrix state, S_t = (exp(w_t) + Σ a bᵀ) S_{t-1} + Σ k vᵀ,",
            "runs in the kernels below: in chunks (backends/templates/mat_chunk.py.jinja)",
            "where they apply, else step by step (mat_recurrent.py.jinja); its operands and",
            "the outputs are computed on all tokens at once, as in the chunk backend."],
            self.forward(),
            ["", "from reclang.runtime.chunk import causal_pass, check_log_decay",
             "from reclang.runtime.operands import operand"],
            slots=dict(chunk=self.schedule.chunk, schedule=self.schedule))
