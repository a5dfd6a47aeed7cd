"""The programs of the triton backends around their kernels: the scan program with the
diagonal scan kernel, the chunk program with the matrix-state kernels."""

from __future__ import annotations

import textwrap

from reclang.ir import IR

from .chunk import ChunkProgram
from .render import assemble
from .scan import ScanProgram


class TritonScanProgram(ScanProgram):
    """The scan backend's program with the scan as a kernel defined in the same file."""

    title, scan_function = "Triton", "linear_scan"

    def __init__(self, ir: IR, plan=None, not_gated: str = ""):
        super().__init__(ir, plan)
        self.not_gated = not_gated  # why the gated scan does not apply

    def source(self) -> str:
        forward = self.forward(
            f"Runs {self.ir.name} over whole sequences with the Triton scan: inputs "
            "[B, T, ...], states are the initial ones; returns (outputs, final states).")
        imports = ["", "from reclang.runtime.operands import operand"] if "operand(" in forward \
            else []
        return assemble(self, "diag_scan.py.jinja", [
            "Triton backend: h' = a h + b elementwise; the scan is the kernel below (from",
            "backends/templates/diag_scan.py.jinja); a and b are computed on all tokens at once.",
            *textwrap.wrap(f"Not the gated scan: {self.not_gated}.", 88)], forward, imports)


class TritonChunkProgram(ChunkProgram):
    """The chunk backend's program with each state run by the recurrent kernel."""

    pass_function, how, packed = "state_pass", "with the Triton kernel", True
    every = False  # every kernel variant, whatever the plan calls (to test the kernels)

    def source(self) -> str:
        forward = self.forward()
        checks = "causal_pass, check_log_decay" if self.checks else "causal_pass"
        return assemble(self, "mat_recurrent.py.jinja", [
            "Triton backend: each matrix state, S_t = (exp(w_t) + Σ a bᵀ) S_{t-1} + Σ k vᵀ,",
            "runs in the kernels below: in chunks (backends/templates/mat_chunk.py.jinja)",
            "where they apply, else step by step (mat_recurrent.py.jinja); its operands and",
            "the outputs are computed on all tokens at once, as in the chunk backend."],
            forward,
            ["", f"from reclang.runtime.chunk import {checks}",
             "from reclang.runtime.operands import operand"],
            slots=dict(chunk=self.chunk, **self.variants()))

    def variants(self) -> dict:
        """Which kernels the file holds, from the plan: the chunk kernels for the states
        with one input term, one readout and a low-rank part of rank 1 at most (their WY
        kernels if one has that part), the recurrent kernel for the others."""
        if self.every:
            return dict(chunked=True, recurrent=True, feed=True)
        queries, _ = self.readouts()
        chunked = [s for s in self.ops.states if len(s.inputs) == 1 and len(s.low_rank) <= 1
                   and len(queries.get(s.name, [])) == 1]
        return dict(chunked=bool(chunked), recurrent=len(chunked) < len(self.ops.states),
                    feed=any(s.low_rank for s in chunked))
