"""Gradients at an exact tie (relu at 0, clamp at a bound), where the kernels' printed
derivatives and PyTorch's autograd could disagree: zero-padded inputs with zero biases
hit them. Every backend that runs a nonlinear cell gives the gradients of the PyTorch
functions the sequential backend calls (torch.relu: 0 at 0; torch.clamp: 1 on the closed
interval); before, the fused, cpu and newton kernels took 1/2 there."""

import pytest
import torch

import reclang

CELL = """cell r(N = 3):
    input x[N], lo[N]
    param b[N] = 0
    state h[N] = 0
    h[n] <- relu(0.5 * h[n] + x[n] + b[n]) + clamp(h[n] + x[n], lo[n], 1) + clamp(x[n], 0, lo[n])
    out y[n] = h[n]
"""


def reference(x, lo, b):
    """The recurrence in plain PyTorch, with torch.relu and torch.clamp."""
    h, ys = torch.zeros_like(x[:, 0]), []
    for t in range(x.shape[1]):
        one = torch.ones_like(h)
        h = torch.relu(0.5 * h + x[:, t] + b) + torch.clamp(h + x[:, t], lo[:, t], one) + \
            torch.clamp(x[:, t], torch.zeros_like(h), lo[:, t])
        ys.append(h)
    return torch.stack(ys, 1)


def gradients(y, leaves):
    weights = torch.arange(1.0, 1.0 + y[0, 0].numel(), dtype=y.dtype)
    return torch.autograd.grad((y * weights).sum(), leaves)


@pytest.mark.parametrize("backend", ["sequential", "newton", "cpu", "triton"])
def test_gradients_at_ties_are_torchs(backend):
    cell = reclang.loads(CELL, "ties.rec")
    assert cell.verdict(backend).supported, cell.verdict(backend).reason
    x = torch.zeros(2, 5, 3, dtype=torch.float64, requires_grad=True)  # all at a tie
    lo = torch.zeros(2, 5, 3, dtype=torch.float64, requires_grad=True)
    m = cell.module(backend).double()
    y, _ = m(x=x, lo=lo)
    ours = gradients(y, (x, lo, m.b))
    expected = gradients(reference(x, lo, m.b), (x, lo, m.b))
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)
    assert any(e.abs().sum() > 0 for e in expected)  # the ties carry gradient somewhere
