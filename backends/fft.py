"""The fft backend: for `diag-lti` cells, whose decay is constant in time (S4D, LRU).

Recurrence: h_t = a ⊙ h_{t-1} + b_t, t = 0 .. T-1, with a the same at every step.
Algorithm:  unrolled, h_t = Σ_{s≤t} a^(t-s) b_s + a^(t+1) h_{-1}: a causal convolution of
            b with the kernel K_j = a^j, j = 0..T-1, computed as a product of FFTs of
            length 2T (zero padding makes the circular convolution causal). a and b
            are printed from the plan, as in the scan backend (backends/scan.py); a is
            taken at the first step.
Cost:       O(B·T·log T·state) work, no sequential part; the kernel costs O(T·state).
Numerics:   K_j = a^j by `pow` (relative error about eps·j·|log a|, not accumulated
            step by step). The FFT's error is relative to the largest terms of the
            sum, so decays |a| > 1 (growing kernels) lose the small outputs; the
            analyzer does not prove |a| ≤ 1, so this is on the spec's author.
            Inputs with a NaN or ±inf are scanned (linear_scan) instead: the FFT would
            carry them to every step, earlier ones included.
"""

from __future__ import annotations

from reclang.codegen.scan import ScanProgram
from reclang.schedule import FftSchedule

from .base import Backend, register


class FftProgram(ScanProgram):
    """The scan backend's program with the scan replaced by an FFT convolution."""

    title, scan_function, runtime = "FFT", "fft_scan", "fft"


class Fft(Backend):
    name, forms, kind, schedules = "fft", ("diag-lti",), "diag", FftSchedule

    def lower(self, plan, schedule: FftSchedule) -> str:
        return FftProgram(plan.ir, self.form(plan), schedule, plan.summary).source()


register(Fft())
