"""The triton backend's gated scan (backends/triton_scan.py, reclang/codegen/gated_scan.py): random diagonal cells whose
gates the kernel computes, against the sequential backend in float64 under the
interpreter (outputs, final states, gradients of inputs, params and initial states,
across tiles of 64 steps), and what the generated file computes where."""

import os

import pytest
import torch
from helpers import (as_reference, assert_matches_reference, expression, random_inputs,
                     random_state, small)
from hypothesis import example, given, settings
from hypothesis import strategies as st

import reclang

# state-free values of one unit n: projections, an input, params, a sum over an input
TERMS = ["z[0, n]", "z[1, n]", "u[n]", "p[n]", "0.5", "sum(d: x[d])", "u[n] * p[n]"]
FUNCTIONS = ["tanh({})", "sigmoid({})", "softplus({})", "logsigmoid({})", "exp(-abs({}))",
             "relu({})", "silu({})", "max({}, 0.2)", "({}) / (1 + abs(p[n]))",
             "sqrt(1 + ({}) ** 2)", "-{}"]
# decays in the forms papers write them: the exp(logsigmoid(x) / 16) among them
DECAYS = ["sigmoid({})", "exp(-softplus({}))", "exp(logsigmoid({}) / 16)", "1 - sigmoid({})",
          "tanh({})", "0.9"]


CELL = ("cell g(D = 3, N = 5):\n"
        "    input x[D], u[N]\n"
        "    param W[2, N, D] ~ normal(0, 0.5)\n"
        "    param p[N] ~ normal(0, 1)\n"
        "    state h[N] = 0\n"
        "    z[g, n] = sum(d: W[g, n, d] * x[d])\n"
        "    a[n: N] = {a}\n"
        "    out before[n] = tanh(h[n]) * ({y})\n"     # the previous state
        "    h[n] <- a[n] * h[n] + {b} + 0.1 * u[n]\n"  # reads an input, at least
        "    out y[n] = h[n]\n"
        "    out total = sum(n: h[n] * p[n])\n")       # not of the state's shape


@st.composite
def cells(draw):
    decay = draw(st.sampled_from(DECAYS)).format(draw(expression(1, TERMS, FUNCTIONS)))
    return CELL.format(a=decay, b=draw(expression(2, TERMS, FUNCTIONS)),
                       y=draw(expression(1, TERMS, FUNCTIONS)))


# padding channels past N compute what they like (0 / 0 included) and are masked
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=int(os.environ.get("RANDOM_CELLS", 60)) // 4, deadline=None)
@given(cells(), st.sampled_from([1, 2, 7, 64, 65, 130]), st.integers(1, 3))
@example(CELL.format(a="exp(logsigmoid(z[0, n]) / 16)", b="sigmoid(z[1, n]) * u[n]", y="1"),
         65, 2)
def test_random_gated_cells_on_the_gated_scan(text, T, B):
    cell = reclang.loads(text, "gated.rec")
    assert cell.plan.form in ("diag", "diag-lti")  # by construction
    assert "def g_gated_scan_kernel(" in cell.source("triton")
    torch.manual_seed(0)
    triton_ = cell.module("triton").double()
    sequential = cell.module("sequential").double()
    assert_matches_reference(triton_, as_reference(sequential), random_inputs(triton_, B, T),
                             random_state(triton_, B), atol=1e-9, rtol=1e-7)


def test_the_gates_are_computed_in_the_kernel():
    source = small("min_gru").source("triton")
    forward = source[source.index("\ndef forward("):source.index("\ndef step(")]
    kernel = source[source.index("def min_gru_coefficients("):source.index("\ndef forward(")]
    assert "torch.sigmoid" not in forward and "_tokens" not in forward  # nothing materialized
    assert forward.count("operand(torch.einsum(") == 2                   # W_z x and W_h x
    assert "tl.sigmoid(" in kernel and "def min_gru_derivatives(da, db, " in kernel
    # the spec's lines above the statements they become
    assert "# min_gru.rec:17: h[n] <- (1 - z[n]) * h[n] + z[n] * candidate[n]" in kernel
    rg_lru = small("rg_lru").source("triton")
    assert "softplus(Lambda)" in rg_lru  # params alone: a constant, computed once per call
    assert rg_lru == small("rg_lru").source("triton")  # deterministic


@pytest.mark.parametrize("name, reason", [
    ("lru", "real states only"),
    ("s4d", "real states only"),
])
def test_other_diagonal_cells_run_the_plain_scan_and_say_why(name, reason):
    source = small(name).source("triton")
    assert f"def {name}_scan_kernel(" in source and "gated_scan" not in source
    header = " ".join(line[2:] for line in source.splitlines() if line.startswith("# "))
    assert "Not the gated scan:" in header and reason in header


def test_a_state_with_heads_and_operands_of_one_head():
    text = ("cell heads(D = 3, H = 2, N = 5):\n"
            "    input x[D], u[H]\n"
            "    param W[H, N, D] ~ normal(0, 0.5)\n"
            "    param A_log[H] = 0\n"
            "    state s[H, N] = 0\n"
            "    z[h, n] = sum(d: W[h, n, d] * x[d])\n"
            "    s[h, n] <- exp(-exp(A_log[h]) * softplus(u[h])) * s[h, n] + sigmoid(z[h, n])\n"
            "    out y[h, n] = s[h, n]\n")
    cell = reclang.loads(text, "heads.rec")
    source = cell.source("triton")
    assert "def heads_gated_scan_kernel(" in source
    assert "= operand(u, _like, (2,))\n" in source  # read broadcast, not expanded
    torch.manual_seed(0)
    triton_ = cell.module("triton").double()
    sequential = cell.module("sequential").double()
    assert_matches_reference(triton_, as_reference(sequential), random_inputs(triton_, 2, 67),
                             random_state(triton_, 2), atol=1e-9, rtol=1e-7)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # padding channels, as above
@pytest.mark.parametrize("name", ["rg_lru", "mamba_s6", "random.rec"])
def test_packed_sequences_in_one_launch(name):
    """cu_seqlens with four different lengths, one of them crossing a tile of 64 steps:
    one launch, against sequential sequence by sequence, with the gradients of inputs,
    params and the initial states; then `lengths` (a right-padded batch), one launch.
    (random.rec: CELL, whose outputs read the previous state too.)"""
    cell = reclang.loads(CELL.format(a="sigmoid(z[0, n])", b="z[1, n]", y="u[n]"), name) \
        if name == "random.rec" else small(name)
    torch.manual_seed(0)
    triton_ = cell.module("triton").double()
    sequential = cell.module("sequential").double()
    calls = []
    code = triton_._generated
    # the scan: its states written, or its readout computed in the kernel (Mamba's)
    scans = {n: getattr(code, n) for n in ("gated_scan", "gated_readout") if hasattr(code, n)}
    for n, launch in scans.items():
        setattr(code, n, lambda *args, launch=launch, **kw: calls.append(1) or
                launch(*args, **kw))
    cu = torch.tensor([0, 3, 4, 70, 75])
    try:
        assert_matches_reference(triton_, as_reference(sequential),
                                 random_inputs(triton_, 1, 75), random_state(triton_, 4),
                                 varlen=dict(cu_seqlens=cu), atol=1e-9, rtol=1e-7)
        assert len(calls) == 1
        lengths = torch.tensor([3, 1, 7, 5])
        assert_matches_reference(triton_, as_reference(sequential),
                                 random_inputs(triton_, 4, 7), random_state(triton_, 4),
                                 varlen=dict(lengths=lengths), atol=1e-9, rtol=1e-7)
        assert len(calls) == 2
    finally:
        for n, launch in scans.items():
            setattr(code, n, launch)


# a Mamba-like cell whose output sums the new state over its lanes: groups of G channels
READ = ("cell reads(D = 3, N = {n}):\n"
        "    input x[D], u[N]\n"
        "    param W[N, D] ~ normal(0, 0.5)\n"
        "    param A_log[D, N] ~ normal(0, 0.5)\n"
        "    state s[D, N] = 0\n"
        "    c[n] = sum(e: W[n, e] * x[e])\n"
        "    s[d, n] <- exp(-exp(A_log[d, n]) * softplus(x[d])) * s[d, n] + u[n] * x[d]\n"
        "    out y[d] = sum(n: c[n] * s[d, n]) + 0.5 * x[d]\n")


@pytest.mark.parametrize("N, T", [(2, 65), (8, 130), (16, 1)])
def test_the_readout_is_computed_in_the_kernel(N, T):
    """y_t = Σ_n c_t s_t + x/2 summed in the kernel from the scan's tile (no [B, T, D, N]
    states written: the file has no gated_scan), over tiles of 64 steps and a last one cut
    short, against sequential; packed sequences too (their tiles end where they end)."""
    cell = reclang.loads(READ.format(n=N), "reads.rec")
    assert "gated_readout([" in cell.source("triton")
    torch.manual_seed(0)
    triton_ = cell.module("triton").double()
    sequential = cell.module("sequential").double()
    assert not hasattr(triton_._generated, "gated_scan")  # the file has no state writer
    assert_matches_reference(triton_, as_reference(sequential),
                             random_inputs(triton_, 2, T), random_state(triton_, 2),
                             atol=1e-9, rtol=1e-7)
    cu = torch.tensor([0, 1, 3, 3 + T])
    assert_matches_reference(triton_, as_reference(sequential),
                             random_inputs(triton_, 1, 3 + T), random_state(triton_, 3),
                             varlen=dict(cu_seqlens=cu), atol=1e-9, rtol=1e-7)


def test_the_readout_under_vmap_grad_and_jacrev():
    """The readout's kernels fold a vmapped dim into the batch, forward and backward."""
    from torch.func import grad, jacrev, vmap

    m = reclang.loads(READ.format(n=4), "reads.rec").module("triton").double()
    xs = [random_inputs(m, 2, 5, seed=s) for s in (1, 2)]

    def f(x, u):  # one output: the module returns it alone
        return m(x=x, u=u)[0]

    got = vmap(f)(torch.stack([x["x"] for x in xs]), torch.stack([x["u"] for x in xs]))
    torch.testing.assert_close(got, torch.stack([f(x["x"], x["u"]) for x in xs]))
    x, u = xs[0]["x"], xs[0]["u"]
    leaf = x.clone().requires_grad_()
    want = torch.autograd.grad(f(leaf, u).square().sum(), leaf)[0]
    torch.testing.assert_close(grad(lambda a: f(a, u).square().sum())(x), want)
    torch.testing.assert_close(jacrev(lambda a: f(a, u))(x),
                               torch.autograd.functional.jacobian(lambda a: f(a, u), x))
