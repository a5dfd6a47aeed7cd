"""Constants in generated code: printed as Python that evaluates to them (inf, nan,
integers past 2**53), refused at their location when no float holds them, and of the
computation's dtype (a where of two numbers is not float32 in a float64 run)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from reclang.codegen.ir_to_torch import number
from reclang.codegen.fused_loop import gates_called
from reclang.codegen.render import render

import reclang

CPU = ("sequential", "scan", "chunk", "fft")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def cell_of(body: str, hypers: str = "N = 3"):
    return reclang.loads(f"cell c({hypers}):\n" + "".join(f"    {line}\n" for line in body))


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e308, -0.0, 5e-324,
                                   2 ** 53 + 1, 2 ** 1000, -(2 ** 1000), 3, True,
                                   complex(math.inf, 1), complex(1, math.nan), 1 - 2j])
def test_number_is_python_for_the_value(value):
    back = eval(number(value), {})  # the printer's own output
    expected = float(value) if isinstance(value, int) and abs(value) > 2 ** 53 else value
    assert type(back) is type(expected)
    assert repr(back) == repr(expected)


def outputs(cell, backends, **inputs):
    result = {}
    for backend in backends:
        if cell.supports(backend):
            y, _ = cell.module(backend).double()(**inputs)
            result[backend] = y
    return result


def test_large_integers_are_floats():
    """2 ** 1000 was printed as an int: an overflow in the tensor op."""
    cell = cell_of(["input x[N]", "out y[n] = x[n] * 2 ** 1000 * 2 ** -1000 + 2 ** 60"])
    x = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64)
    for backend, y in outputs(cell, CPU, x=x).items():
        assert torch.equal(y, x + 2.0 ** 60), backend


@pytest.mark.parametrize("expr, col", [("1e309", 23), ("2 ** 20000", 23), ("10 ** 10 ** 10", 23),
                                       ("1" * 5000, 23), ("(2 ** 600 * 2 ** 600)", 24)])
def test_constants_past_float_range_are_refused_where_they_are(expr, col):
    with pytest.raises(reclang.RecError) as err:
        cell_of(["input x[N]", f"out y[n] = x[n] * {expr}"])
    assert f"<string>:3:{col}: error:" in str(err.value)
    assert str(err.value).rstrip().endswith(" " * (col - 1 + 4) + "^")


# ---- where of two numbers, in float64
DIAG = ["input x[N]", "state h[N] = 0",
        "h[n] <- 0.5 * h[n] + x[n] * where(n == 0, 0.1, 0.3)",
        "out y[n] = h[n] * where(x[n] > 0, 1, 0)"]


def diag_direct(x):
    w = torch.tensor([0.1, 0.3, 0.3], dtype=torch.float64)
    h, ys = torch.zeros(x.shape[0], 3, dtype=torch.float64), []
    for t in range(x.shape[1]):
        h = 0.5 * h + x[:, t] * w
        ys.append(h * (x[:, t] > 0))
    return torch.stack(ys, 1)


def test_where_of_numbers_is_float64_in_a_float64_run():
    """x * where(n == 0, 0.1, 0.3) gave 0.10000000149...: a float32 0.1."""
    cell = cell_of(DIAG)
    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = diag_direct(x)
    y = outputs(cell, ["sequential"], x=x)["sequential"]
    assert torch.equal(y, expected)  # exactly: the same operations in float64
    m = cell.module("sequential").double()
    y1, _ = m.step(x=x[:, 0])
    assert torch.equal(y1, expected[:, 0])
    for backend, y in outputs(cell, CPU, x=x).items():
        torch.testing.assert_close(y, expected, rtol=1e-13, atol=1e-15, msg=backend)


def test_where_of_numbers_in_an_einsum():
    """A float32 where among float64 factors made einsum fail."""
    cell = cell_of(["input x[N]", "param W[N, N] ~ uniform(-1, 1)",
                    "out y[n] = sum(i: W[n, i] * where(i == n, 0.1, 0.0) * x[i])"])
    x = torch.randn(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    m = cell.module("sequential").double()
    expected = torch.einsum("ni,bti->btn", m.W.detach() * torch.eye(3, dtype=torch.float64)
                            * 0.1, x)
    y, _ = m(x=x)
    torch.testing.assert_close(y, expected, rtol=1e-15, atol=1e-15)


MATRIX = ["input k[N], v[N], g[N]", "state S[N, N] = 0",
          "S[i, j] <- exp(g[i]) * S[i, j] + k[i] * v[j] * where(i == 0, 0.1, 0.3)",
          "out o[j] = sum(i: k[i] * S[i, j])"]


def matrix_direct(k, v, g):
    w = torch.tensor([0.1, 0.3, 0.3], dtype=torch.float64)
    S, ys = torch.zeros(k.shape[0], 3, 3, dtype=torch.float64), []
    for t in range(k.shape[1]):
        S = torch.exp(g[:, t])[:, :, None] * S + (k[:, t] * w)[:, :, None] * v[:, t, None, :]
        ys.append(torch.einsum("bi,bij->bj", k[:, t], S))
    return torch.stack(ys, 1)


def test_where_of_numbers_in_the_chunk_operands():
    cell = cell_of(MATRIX)
    assert cell.supports("chunk")
    gen = torch.Generator().manual_seed(0)
    k, v = (torch.randn(2, 5, 3, dtype=torch.float64, generator=gen) for _ in range(2))
    g = torch.nn.functional.logsigmoid(torch.randn(2, 5, 3, dtype=torch.float64,
                                                   generator=gen))
    expected = matrix_direct(k, v, g)
    for backend, y in outputs(cell, ("sequential", "chunk"), k=k, v=v, g=g).items():
        torch.testing.assert_close(y, expected, rtol=1e-13, atol=1e-14, msg=backend)


NONLINEAR = ["input x[N]", "param W[N, N] ~ uniform(-1, 1)", "state h[N] = 0",
             "h[n] <- tanh(sum(m: W[n, m] * h[m]) + x[n]) * where(x[n] > 0, 0.1, 0.3)",
             "out y[n] = h[n]"]
GATED = ["input x[N]", "state h[N] = 0",
         "h[n] <- sigmoid(x[n]) * h[n] + x[n] * where(x[n] > 0, 0.1, 0.3)",
         "out y[n] = h[n]"]


@pytest.mark.parametrize("body, form", [(NONLINEAR, "nonlinear"), (GATED, "diag"),
                                        (MATRIX, "mat-decay")])
def test_where_of_numbers_in_triton_kernels(body, form):
    """tl.where of two numbers is float32 too: the kernels print a tile of the
    equations' dtype (interpreted on the CPU, tests/conftest.py)."""
    pytest.importorskip("triton")
    cell = cell_of(body)
    assert cell.plan.form == form and cell.supports("triton")
    torch.manual_seed(0)
    reference = cell.module("sequential").double()
    m = cell.module("triton").double().to(DEVICE)
    m.load_state_dict(reference.state_dict())
    gen = torch.Generator().manual_seed(0)
    inputs = {d.name: torch.randn(2, 3, 3, dtype=torch.float64, generator=gen)
              for d in cell.ir.inputs}
    if "g" in inputs:
        inputs["g"] = torch.nn.functional.logsigmoid(inputs["g"])
    y, _ = reference(**inputs)
    y_t, _ = m(**{k: v.to(DEVICE) for k, v in inputs.items()})
    torch.testing.assert_close(y_t.cpu(), y, rtol=1e-12, atol=1e-13)
    # the interpreter makes tl.where(c, 0.1, 0.3) float64 (numpy), compiled Triton
    # float32: the equations printed into the kernels are checked too
    number = r"-?[\d.]+(e[-+]?\d+)?"
    printed = m.source.replace(render("gates.py.jinja", gates=gates_called(m.source)), "")
    assert not re.search(rf"tl\.where\([^,]*, {number}, {number}\)", printed)


def test_where_of_complex_numbers_is_complex128_in_a_float64_run():
    cell = cell_of(["input x[N]", "out y[n] = x[n] * where(x[n] > 0, 0.1j, 0.3)"])
    x = torch.tensor([[[1.0, -2.0, 3.0]]], dtype=torch.float64)
    c128 = torch.complex128
    expected = x * torch.where(x > 0, torch.tensor(0.1j, dtype=c128), torch.tensor(0.3, dtype=c128))
    for backend, y in outputs(cell, CPU, x=x).items():
        assert y.dtype == c128 and torch.equal(y, expected), backend
