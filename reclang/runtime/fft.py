"""The FFT convolution of a time-invariant diagonal recurrence (see
backends/fft.py)."""

from __future__ import annotations

import torch

from .scan import branches_on_data, linear_scan


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

