"""Parameters as nn.Linear makes them: of the default dtype, or the `device` and `dtype`
asked for, initialized in that dtype, and again by `reset_parameters()`."""

import pytest
import torch

import reclang

SPEC = """cell p(N = 5):
    input x[N]
    param c[N] = 0.1, a[n: N] = log(1 + n / 7) * 0.3, w[N] = uniform(-0.5, 0.5)
    param z[N] = normal(0, 1) + c, lam[n: N]: complex = exp(0.2j * n) / 3
    state s[N] = 0.7
    s[n] <- a[n] * s[n] + w[n] * z[n] * x[n] + c[n]
    out y[n] = s[n] * abs(lam[n])
"""


def float64_initializers(n=5):
    """The initializers of SPEC computed in float64 by torch itself."""
    i = torch.arange(n, dtype=torch.float64)
    return {"c": torch.full((n,), 0.1, dtype=torch.float64),
            "a": torch.log(1 + i / 7) * 0.3,
            "lam": torch.exp(0.2j * i.to(torch.complex128)) / 3}


def test_parameters_follow_the_default_dtype_and_are_exact_in_it():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        m = reclang.loads(SPEC).module()
    finally:
        torch.set_default_dtype(previous)
    assert {p.dtype for p in m.parameters()} == {torch.float64, torch.complex128}
    for name, want in float64_initializers().items():
        assert torch.equal(getattr(m, name).detach(), want), name


def test_a_float64_module_gets_float64_constants_under_a_float32_default():
    m = reclang.loads(SPEC).module(dtype=torch.float64)
    assert m.c.dtype == torch.float64 and m.lam.dtype == torch.complex128
    for name, want in float64_initializers().items():
        assert torch.equal(getattr(m, name).detach(), want), name
    assert m.initial_state(2, torch.float64)["s"][0, 0].item() == 0.7  # states alike


def test_default_module_is_float32():
    m = reclang.loads(SPEC).module()
    assert m.c.dtype == torch.float32 and m.lam.dtype == torch.complex64


def test_a_module_built_on_the_meta_device_is_initialized_by_reset_parameters():
    cell = reclang.loads(SPEC)
    torch.manual_seed(3)
    want = {k: p.detach().clone() for k, p in cell.module().named_parameters()}
    m = cell.module(device="meta")
    assert all(p.is_meta for p in m.parameters())
    m.to_empty(device="cpu")
    torch.manual_seed(3)
    m.reset_parameters()
    got = {k: p.detach() for k, p in m.named_parameters()}
    assert got.keys() == want.keys()
    for k, value in want.items():
        assert torch.equal(got[k], value), k
    y, _ = m(x=torch.ones(1, 3, 5))
    assert y.shape == (1, 3, 5) and torch.isfinite(y).all()


def test_reset_parameters_draws_again_in_place():
    m = reclang.loads(SPEC).module()
    w = m.w
    before = w.detach().clone()
    with torch.no_grad():
        m.c.fill_(5.0)
    m.reset_parameters()
    assert m.w is w and not torch.equal(m.w.detach(), before)
    assert torch.equal(m.c.detach(), torch.full((5,), 0.1))


def test_the_parameters_dtype_must_be_real_floating_point():
    with pytest.raises(TypeError, match="real floating-point"):
        reclang.loads(SPEC).module(dtype=torch.complex64)
