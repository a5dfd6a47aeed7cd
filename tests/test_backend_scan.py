"""The scan and fft backends against the sequential one (float64: outputs, final
states and gradients of inputs, params and initial states), on every catalogue spec
they can run, at awkward lengths around the chunk size; and their scans (linear_scan,
fft_scan) against a plain loop."""

import pytest
import torch
from helpers import (as_reference, assert_matches_reference, cells_on, random_inputs,
                     random_state, small)
from hypothesis import given, settings
from hypothesis import strategies as st

import reclang
from reclang.runtime.fft import fft_scan
from reclang.runtime.scan import chunk_length, dense_scan, linear_scan

F = torch.nn.functional
TRANSFORMS = {"g": F.logsigmoid}


def test_scan_runs_the_diagonal_cells_and_fft_the_time_invariant_ones():
    assert set(cells_on("scan")) == {"hgrn", "lru", "lsrl_parity", "mamba_s6", "min_gru",
                                     "min_lstm", "rg_lru", "s4d", "qrnn", "mamba_block",
                                     "lssl", "s4"}  # the last 2: dense
    assert set(cells_on("fft")) == {"lru", "lsrl_parity", "s4d"}


PAIRS = [(backend, name) for backend in ("scan", "fft") for name in cells_on(backend)]


def test_chunk_length_is_about_the_square_root():
    assert [chunk_length(T) for T in (1, 2, 4, 5, 64, 65, 1000)] == [1, 2, 2, 3, 8, 9, 32]


# around whole chunks (C = √T: 63, 64, 65 and 1000 leave 7, 0, 2, 8 steps past them)
@pytest.mark.parametrize("T", [1, 2, 7, 63, 64, 65, 129, 1000])
@pytest.mark.parametrize("backend, name", PAIRS)
def test_matches_sequential(backend, name, T):
    cell = small(name)
    torch.manual_seed(0)
    scan = cell.module(backend).double()
    sequential = cell.module("sequential").double()
    x = random_inputs(scan, 2, T, **TRANSFORMS)
    s = random_state(scan, 2)
    assert_matches_reference(scan, as_reference(sequential), x, s, atol=1e-9, rtol=1e-7)
    assert_matches_reference(scan, as_reference(sequential), x, None, atol=1e-9, rtol=1e-7)


def test_step_of_the_scan_module_is_the_cell_step():
    cell = small("min_gru")
    scan, sequential = cell.module("scan").double(), cell.module("sequential").double()
    scan.load_state_dict(sequential.state_dict())
    x = random_inputs(scan, 2, None)
    torch.testing.assert_close(scan.step(**x)[0], sequential.step(**x)[0])


def loop(a, b, h, reverse=False):
    """The recurrence as written, one step at a time (autograd differentiates it)."""
    states = [None] * a.shape[1]
    for t in reversed(range(a.shape[1])) if reverse else range(a.shape[1]):
        h = states[t] = a[:, t] * h + b[:, t]
    return torch.stack(states, 1)


def random_scan_operands(gen, T, kind):
    shape = (2, T, 3)
    a = torch.rand(shape, generator=gen, dtype=torch.float64)
    if kind == "signed":
        a = 2 * a - 1
    if kind == "complex":
        a = torch.polar(a, 6 * torch.rand(shape, generator=gen, dtype=torch.float64))
    b = torch.randn(shape, generator=gen, dtype=torch.float64).to(a.dtype)
    h0 = torch.randn(2, 3, generator=gen, dtype=torch.float64).to(a.dtype)
    return [x.requires_grad_() for x in (a, b, h0)]


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 300), chunk=st.sampled_from([None, 1, 2, 3, 8, 64, 400]),
       kind=st.sampled_from(["positive", "signed", "complex"]), reverse=st.booleans(),
       seed=st.integers(0, 99))
def test_linear_scan_matches_a_loop(T, chunk, kind, reverse, seed):
    """States and gradients (the backward is a reverse scan written by hand: compared
    with autograd through the loop, complex conjugates included)."""
    gen = torch.Generator().manual_seed(seed)
    operands = random_scan_operands(gen, T, kind)
    got, want = linear_scan(*operands, chunk, reverse), loop(*operands, reverse)
    torch.testing.assert_close(got, want)
    weight = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    grads = [torch.autograd.grad((y * weight).abs().sum(), operands) for y in (got, want)]
    for g_got, g_want in zip(*grads):
        torch.testing.assert_close(g_got, g_want)


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 300), kind=st.sampled_from(["positive", "signed", "complex"]),
       seed=st.integers(0, 99))
def test_fft_scan_matches_a_loop(T, kind, seed):
    """A decay constant in time (|a| <= 1), states and gradients."""
    gen = torch.Generator().manual_seed(seed)
    a, b, h0 = random_scan_operands(gen, T, kind)
    a_const = a[:, :1].expand_as(a)
    got, want = fft_scan(a_const, b, h0), loop(a_const, b, h0)
    torch.testing.assert_close(got, want)
    weight = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    grads = [torch.autograd.grad((y * weight).abs().sum(), (a, b, h0)) for y in (got, want)]
    for g_got, g_want in zip(*grads):
        torch.testing.assert_close(g_got, g_want)


@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_second_derivatives(reverse):
    gen = torch.Generator().manual_seed(0)
    operands = random_scan_operands(gen, 11, "signed")
    assert torch.autograd.gradgradcheck(lambda a, b, h: linear_scan(a, b, h, 3, reverse),
                                        operands)


def test_no_overflow_for_gates_near_zero_over_long_sequences():
    cell = small("hgrn")
    m = cell.module("scan")
    x = random_inputs(m, 1, 4096, g=lambda g: -20 + 0 * g)
    x = {k: v.float() for k, v in x.items()}
    y, state = m(**x)
    assert torch.isfinite(y).all() and torch.isfinite(state["h"]).all()


def test_backend_choice_and_refusal():
    lstm = small("lstm")
    with pytest.raises(reclang.RecError, match="backend 'scan' cannot run cell lstm: needs diag"):
        lstm.module("scan")
    assert lstm.module("auto").backend == "sequential"
    assert lstm.module("auto").backend_for("cuda") == "triton"  # the fused loop


@pytest.mark.parametrize("name", cells_on("scan"))
def test_auto_runs_diagonal_cells_with_the_scan(name):
    m = small(name).module("auto")
    cuda = "scan" if small(name).plan.form == "dense" else "triton"  # no kernel for dense ones
    assert (m.backend, m.backend_for("cpu"), m.backend_for("cuda")) == ("scan", "scan", cuda)


def test_a_module_runs_the_code_chosen_for_the_device_of_its_inputs():
    cell = small("min_gru")
    m = cell.module("sequential").double()
    x = random_inputs(m, 2, 9)
    want, _ = m(**x)
    m.use_on("cpu", "scan", *cell._generated("scan", None))
    assert (m.backend, m.backend_for("cpu"), m.backend_for("cuda")) == \
        ("sequential", "scan", "sequential")
    got, _ = m(**x)
    torch.testing.assert_close(got, want)
    assert got.grad_fn.name() != want.grad_fn.name()  # computed by other code


# ---- dense transitions: no catalogue cell has one (LMU's memory is, but LMU is not
# linear as a whole), so these cells are written here.
LMU_MEMORY = """
cell lmu_memory(D = 3, Q = 4):
    input x[D]
    param A[Q, Q] ~ normal(0, 0.3)
    param Bm[Q] ~ normal(0, 1)
    state m[D, Q] = 0
    m[d, q] <- sum(p: A[q, p] * m[d, p]) + Bm[q] * x[d]
    out y[d, q] = m[d, q]
"""
MIXED = """
cell mixed(N = 3, D = 2):
    input x[D], z[N], g[D]
    param A[N, N] ~ normal(0, 0.5)
    param u[N] ~ normal(0, 1)
    state h[N, D] = 0
    state c[D] = 0
    h[n, d] <- sum(m: A[n, m] * sigmoid(z[n]) * h[m, d]) + u[n] * x[d]
    c[d] <- exp(g[d]) * c[d] + x[d]
    out y[d] = sum(n: h[n, d]) + c[d]
"""


@pytest.mark.parametrize("T", [1, 2, 7, 63, 64, 65, 129])
@pytest.mark.parametrize("text", [LMU_MEMORY, MIXED], ids=["lmu_memory", "mixed"])
def test_dense_transitions_match_sequential(text, T):
    """A time-invariant matrix mixing the last axis (LMU's memory), and a time-varying
    one mixing the first axis beside an elementwise state."""
    cell = reclang.loads(text, "dense.rec")
    assert cell.plan.form == "dense" and cell.supports("scan")
    torch.manual_seed(0)
    scan, sequential = cell.module("scan").double(), cell.module("sequential").double()
    x = random_inputs(scan, 2, T, **TRANSFORMS)
    assert_matches_reference(scan, as_reference(sequential), x, random_state(scan, 2),
                             atol=1e-9, rtol=1e-7)
    assert cell.module("auto").backend == "scan"


def test_dense_scan_refuses_large_matrices():
    cell = reclang.loads(LMU_MEMORY, "lmu.rec", Q=65)
    with pytest.raises(reclang.RecError, match=r"lmu.rec:7:5: the transition of m mixes 65 "
                       r"values \(along q\); the dense scan multiplies 65x65 matrices"):
        cell.module("scan")
    assert cell.module("auto").backend == "sequential"


def dense_loop(a, b, h, reverse=False):
    states = [None] * b.shape[1]
    for t in reversed(range(b.shape[1])) if reverse else range(b.shape[1]):
        h = states[t] = (a[:, t] @ h.unsqueeze(-1)).squeeze(-1) + b[:, t]
    return torch.stack(states, 1)


@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 100), N=st.integers(1, 5), chunk=st.sampled_from([None, 1, 3, 16]),
       complex_=st.booleans(), reverse=st.booleans(), seed=st.integers(0, 99))
def test_dense_scan_matches_a_loop(T, N, chunk, complex_, reverse, seed):
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    a = (torch.randn(2, T, 3, N, N, generator=gen, dtype=dtype) / (N + 1)).requires_grad_()
    b = torch.randn(2, T, 3, N, generator=gen, dtype=dtype).requires_grad_()
    h0 = torch.randn(2, 3, N, generator=gen, dtype=dtype).requires_grad_()
    got, want = dense_scan(a, b, h0, chunk, reverse), dense_loop(a, b, h0, reverse)
    torch.testing.assert_close(got, want)
    weight = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    grads = [torch.autograd.grad((y * weight).abs().sum(), (a, b, h0)) for y in (got, want)]
    for g_got, g_want in zip(*grads):
        torch.testing.assert_close(g_got, g_want)


def test_dense_scan_second_derivatives():
    gen = torch.Generator().manual_seed(0)
    a = (torch.randn(2, 9, 3, 3, generator=gen, dtype=torch.float64) / 3).requires_grad_()
    b, h0 = (torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_()
             for s in ((2, 9, 3), (2, 3)))
    assert torch.autograd.gradgradcheck(lambda a, b, h: dense_scan(a, b, h, 2), (a, b, h0))


def test_a_and_b_are_the_plans_not_differences_of_steps():
    """The scan prints a and b from the plan's normal form: a is not the step from h = 1
    minus the step from h = 0, whose rounding is eps·|a + b| (here |b| ~ 1000 |a|), so the
    scan's error in float32 is the loop's, not a thousand times it."""
    cell = reclang.loads("""
cell big_input(N = 8):
    input g[N], x[N]
    state h[N] = 0
    h[n] <- sigmoid(g[n]) * h[n] + 1000 * x[n]
    out y[n] = h[n]
""")
    source = cell.source("scan")
    assert "_tokens" not in source and "_from0" not in source
    assert "_h_a = operand(torch.sigmoid(g), _like, (8,))" in source
    torch.manual_seed(0)
    x = {"g": torch.randn(2, 64, 8, dtype=torch.float64) + 4,
         "x": torch.randn(2, 64, 8, dtype=torch.float64)}
    y_ref, _ = cell.module("sequential").double()(**x)
    x32 = {k: v.float() for k, v in x.items()}
    errors = {b: (cell.module(b)(**x32)[0].double() - y_ref).abs().max().item()
              for b in ("sequential", "scan")}
    assert errors["scan"] <= 2 * errors["sequential"], errors


def test_a_decay_that_is_a_complex_number():
    """a = exp(-0.5 + 1j), a number: a complex tensor for the scan, not a float operand."""
    cell = reclang.loads("""
cell z(N = 3):
    input x[N]
    state h[N]: complex = 0
    h[n] <- exp(-0.5 + 1j) * h[n] + x[n]
    out y[n] = real(h[n])
""")
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    y, state = cell.module("scan")(x=x)
    y_ref, state_ref = cell.module("sequential")(x=x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(state["h"], state_ref["h"])


SUM_OF_A_CONSTANT = """
cell r(D = 3, N = 2):
    input g[N]
    state h[N] = 0
    c[n: N, d: D] = g[n] * 0.5
    h[n] <- 0.5 * h[n] + sum(d: c[n, d])
    out y[n] = h[n]
"""
NEW_VALUE_AS_INPUT = """
cell r(D = 3, N = 2):
    input g[N]
    param W[N, D] ~ normal(0, 0.5)
    state h[N] = 0, S[N, D] = 0
    h[n] <- tanh(g[n])
    S[n, d] <- 0.5 * S[n, d] + tanh(h[n] * W[n, d])
    out y[n] = h[n] + sum(d: S[n, d])
"""


@pytest.mark.parametrize("text, printed", [
    # Σ_d of a value without d is D times it (found by test_wrong_numbers' random cells)
    (SUM_OF_A_CONSTANT, True),
    # S reads h's new value, whose update reads no state: the normal form names it h,
    # as the state before the step, so the step on all tokens finds a and b
    (NEW_VALUE_AS_INPUT, False),
])
def test_a_and_b_printed_where_the_normal_form_says_them(text, printed):
    cell = reclang.loads(text)
    assert ("_tokens" not in cell.source("scan")) == printed
    torch.manual_seed(0)
    scan, sequential = cell.module("scan").double(), cell.module("sequential").double()
    sequential.load_state_dict(scan.state_dict())
    g = torch.randn(2, 9, 2, dtype=torch.float64)
    (y, state), (y_ref, state_ref) = scan(g=g), sequential(g=g)
    torch.testing.assert_close(y, y_ref)
    for name in state_ref:
        torch.testing.assert_close(state[name], state_ref[name])
