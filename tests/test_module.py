"""The module API: names, shapes, dtypes, initial states, parameters, errors."""

import re
from pathlib import Path

import pytest
import torch

import reclang

TWO_OUTPUTS = """
cell two(D = 3, N = 4):
    input x[D]
    param W[N, D] ~ normal(0, 0.5)
    param h0[N] = 0.25
    state h[N] = h0, c[N] = 1
    u[n] = sum(d: W[n, d] * x[d])
    h[n] <- tanh(u[n] + h[n])
    c[n] <- c[n] * sigmoid(u[n])
    out y[n] = h[n]
    out total = sum(n: c[n])
"""


def make(**hypers):
    torch.manual_seed(0)
    return reclang.loads(TWO_OUTPUTS, "two.rec", **hypers).module()


def test_outputs_states_and_params():
    m = make()
    x = torch.randn(2, 5, 3)
    y, state = m(x=x)
    assert set(y) == {"y", "total"} and y["y"].shape == (2, 5, 4) and y["total"].shape == (2, 5)
    assert set(state) == {"h", "c"} and state["h"].shape == (2, 4)
    assert dict(m.named_parameters()).keys() == {"W", "h0"}
    assert isinstance(m.W, torch.nn.Parameter) and m.W.shape == (4, 3)
    assert torch.equal(m.h0.detach(), torch.full((4,), 0.25))


def test_default_initial_state_comes_from_the_spec_and_gets_gradients():
    m = make()
    init = m.initial_state(2)
    assert torch.equal(init["c"], torch.ones(2, 4))
    assert torch.allclose(init["h"], torch.full((2, 4), 0.25))
    y, _ = m(x=torch.randn(2, 1, 3))
    y["y"].sum().backward()
    assert m.h0.grad is not None and m.h0.grad.abs().sum() > 0


def test_given_state_is_used_and_partial_state_is_completed():
    m = make().double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    y_full, s_full = m(x=x)
    y_a, s_a = m(x=x[:, :4])
    y_b, s_b = m(x=x[:, 4:], state=s_a)
    torch.testing.assert_close(torch.cat([y_a["y"], y_b["y"]], 1), y_full["y"])
    torch.testing.assert_close(s_b["c"], s_full["c"])
    _, s_part = m(x=x[:, :1], state={"c": torch.zeros(2, 4, dtype=torch.float64)})
    assert torch.equal(s_part["c"], torch.zeros(2, 4, dtype=torch.float64))


def test_step_matches_forward():
    m = make().double()
    x = torch.randn(3, 7, 3, dtype=torch.float64)
    y, final = m(x=x)
    s = None
    for t in range(7):
        y_t, s = m.step(x=x[:, t], state=s)
        torch.testing.assert_close(y_t["y"], y["y"][:, t])
        torch.testing.assert_close(y_t["total"], y["total"][:, t])
    torch.testing.assert_close(s["h"], final["h"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_run_in_float32(dtype):
    m = make()
    x = torch.randn(2, 9, 3)
    y32, s32 = m(x=x.to(dtype).float())
    y, s = m(x=x.to(dtype))
    assert y["y"].dtype == dtype and s["h"].dtype == torch.float32
    torch.testing.assert_close(y["y"].float(), y32["y"], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(s["h"], s32["h"])


def test_single_output_is_a_tensor():
    m = reclang.loads("cell one(D = 2):\n    input x[D]\n    state h[D] = 0\n"
                      "    h[d] <- h[d] + x[d]\n    out y[d] = h[d]\n").module()
    y, state = m(x=torch.ones(1, 3, 2))
    assert torch.is_tensor(y) and torch.equal(y[0, :, 0], torch.tensor([1.0, 2.0, 3.0]))


@pytest.mark.parametrize("call, error, message", [
    (lambda m: m(x=torch.randn(2, 5, 4)), ValueError, r"input x: expected shape \[B, T, 3\]"),
    (lambda m: m(), TypeError, "needs input 'x'"),
    (lambda m: m(x=torch.randn(2, 5, 3), z=torch.randn(2, 5, 3)), TypeError, "has no input 'z'"),
    (lambda m: m(x=torch.randn(2, 0, 3)), ValueError, "T = 0"),
    (lambda m: m(x=torch.ones(2, 5, 3, dtype=torch.long)), TypeError, "floating-point"),
    (lambda m: m(x=torch.randn(2, 5, 3), state={"q": torch.zeros(2, 4)}), TypeError,
     "has no state 'q'"),
    (lambda m: m(x=torch.randn(2, 5, 3), state={"h": torch.zeros(3, 4)}), ValueError,
     r"state h: expected shape \[2, 4\]"),
    (lambda m: m.step(x=torch.randn(2, 5, 3)), ValueError, r"expected shape \[B, 3\]"),
])
def test_bad_calls_have_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(make())


def test_param_name_that_clashes_with_the_module_is_rejected():
    spec = "cell c(D = 2):\n    input x[D]\n    param step[D] = 1\n    out y[d] = step[d] * x[d]\n"
    with pytest.raises(reclang.RecError, match="clashes with an attribute"):
        reclang.loads(spec).module()


def test_python_keywords_as_names_are_renamed_in_generated_code():
    spec = ("cell c(D = 2):\n    input lambda[D]\n    param sum_[D] = 1\n    state T[D] = 0\n"
            "    T[d] <- T[d] + lambda[d] * sum_[d]\n    out y[d] = T[d]\n")
    m = reclang.loads(spec).module()
    y, state = m(**{"lambda": torch.ones(1, 2, 2)})
    assert torch.equal(state["T"], torch.full((1, 2), 2.0))
    assert "lambda_" in m.source


def test_source_is_traced_to_spec_lines_and_cached_in_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RECLANG_CACHE", str(tmp_path))
    m = make()
    for line in ("h[n] <- tanh(u[n] + h[n])", "out total = sum(n: c[n])"):
        assert re.search(rf"# two.rec:\d+: {re.escape(line)}", m.source)
    files = list(Path(tmp_path).glob("two_sequential_*.py"))
    assert len(files) == 1 and files[0].read_text() == m.source
    assert reclang.loads(TWO_OUTPUTS, "two.rec").source() == m.source  # deterministic


def test_load_from_file_and_hyper_override(tmp_path):
    path = tmp_path / "two.rec"
    path.write_text(TWO_OUTPUTS)
    m = reclang.load(path, N=6).module()
    assert m.W.shape == (6, 3)
    assert repr(reclang.load(path)) == "<reclang cell two(D=3, N=4)>"


def test_gradients_reach_inputs_params_and_initial_state():
    m = make().double()
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    y, s = m(x=x, state={"h": h0})
    (y["y"].sum() + s["c"].sum()).backward()
    assert x.grad.abs().sum() > 0 and h0.grad.abs().sum() > 0 and m.W.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["self", "lengths", "cu_seqlens"])  # state, cell: keywords
def test_an_input_named_as_a_call_argument_is_refused_at_its_line(name):
    """`m(self=...)` cannot reach forward (nn.Module.__call__ takes `self` itself)."""
    cell = reclang.loads(f"cell c(N = 2):\n    input {name}[N]\n    out y[n] = {name}[n]\n",
                         "c.rec")
    with pytest.raises(reclang.RecError, match=r"c\.rec:2:\d+: error: input name"):
        cell.module()
