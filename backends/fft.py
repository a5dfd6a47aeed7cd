"""The fft backend: for `diag-lti` cells, whose decay is constant in time (S4D, LRU).

Recurrence: h_t = a ⊙ h_{t-1} + b_t, t = 0 .. T-1, with a the same at every step.
Algorithm:  unrolled, h_t = Σ_{s≤t} a^(t-s) b_s + a^(t+1) h_{-1}: a causal convolution of
            b with the kernel K_j = a^j, j = 0..T-1, computed as a product of FFTs of
            length 2T (zero padding makes the circular convolution causal). a and b
            come from the loop body on all tokens, as in the scan backend
            (reclang/backends/scan.py); a is taken at the first step.
Cost:       O(B·T·log T·state) work, no sequential part; the kernel costs O(T·state).
Numerics:   K_j = a^j by `pow` (relative error about eps·j·|log a|, not accumulated
            step by step). The FFT's error is relative to the largest terms of the
            sum, so decays |a| > 1 (growing kernels) lose the small outputs; the
            analyzer does not prove |a| ≤ 1, so this is on the spec's author.
            Inputs with a NaN or ±inf are scanned (linear_scan) instead: the FFT would
            carry them to every step, earlier ones included.
"""

from __future__ import annotations

import torch

from reclang.ir import IR

from .scan import ScanProgram, branches_on_data, linear_scan


def fft_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states of h_t = a ⊙ h_{t-1} + b_t from h0, for a constant in time.

    a, b: [B, T, *S] (only a[:, 0] is read); h0: [B, *S]. Returns [B, T, *S].
    """
    finite = torch.isfinite(b).all()  # the FFT mixes all steps: NaN would reach all
    if not branches_on_data(finite):  # torch.compile, vmap: both, then select
        return torch.where(finite, _convolved(a, b, h0), linear_scan(a, b, h0))
    return _convolved(a, b, h0) if bool(finite) else linear_scan(a, b, h0)  # scan: causal


def _convolved(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """fft_scan's states by the FFT convolution with the kernel a^j."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), h0.dtype)
    B, T = b.shape[:2]
    a, b, h0 = a[:, :1].to(dtype), b.to(dtype), h0.to(dtype).unsqueeze(1)
    j = torch.arange(1, T, dtype=a.real.dtype, device=a.device)
    j = j.reshape((1, T - 1) + (1,) * (b.dim() - 2))
    kernel = torch.cat([torch.ones_like(a), torch.pow(a, j)], 1)  # K_j = a^j, [B, T, *S]
    n = 2 * T  # causal: the circular convolution of length 2T wraps nothing into [0, T)
    if dtype.is_complex:
        conv = torch.fft.ifft(torch.fft.fft(b, n, dim=1) * torch.fft.fft(kernel, n, dim=1),
                              n, dim=1)
    else:
        conv = torch.fft.irfft(torch.fft.rfft(b, n, dim=1) * torch.fft.rfft(kernel, n, dim=1),
                               n, dim=1)
    return conv[:, :T] + kernel * (a * h0)


class FftProgram(ScanProgram):
    """The scan backend's program with the scan replaced by an FFT convolution."""

    title, scan_function = "FFT", "fft_scan"


def generate(ir: IR, plan=None) -> str:
    """The generated source of the fft backend (forward and step)."""
    return FftProgram(ir, plan).source()
