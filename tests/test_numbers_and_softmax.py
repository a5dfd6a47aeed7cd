"""`%`, `//` and `floor` on values, the constants `inf` and `pi`, and softmax(i: e):
their meaning (Python's and torch's sign conventions), how every printer writes them,
a running max that starts at -inf without NaN, and their misuse."""

import math

import pytest
import torch
from helpers import as_reference, assert_matches_reference, random_inputs, random_state

import reclang
from reclang import RecError


def sequential(text: str):
    torch.manual_seed(0)
    return reclang.loads(text, "c.rec").module("sequential").double()


def test_floor_division_and_remainder_take_the_divisor_sign():
    m = sequential("cell c():\n    input x, d\n    out y = x % d + 10 * (x // d) + 100 * "
                   "floor(x)\n")
    x = torch.tensor([[[-1.5], [1.5], [-1.5], [7.0]]], dtype=torch.float64)[..., 0]
    d = torch.tensor([[1.0, -1.0, -4.0, 2.5]], dtype=torch.float64)
    want = [(-1.5) % 1 + 10 * (-1.5 // 1) - 200, 1.5 % -1 + 10 * (1.5 // -1) + 100,
            -1.5 % -4 + 10 * (-1.5 // -4) - 200, 7 % 2.5 + 10 * (7 // 2.5) + 700]
    assert m(x=x, d=d)[0][0].tolist() == pytest.approx(want)


def test_a_remainder_of_a_number_by_a_param_has_a_gradient():
    """torch.remainder(3, p) has no backward for p: the number is made a tensor."""
    text = """cell c(N = 3):
    input x[N]
    param p[N] ~ normal(2, 0.1)
    state h[N] = 0
    h[i] <- 0.5 * h[i] + 3 % p[i] + x[i] % 0.7 + (x[i] // 0.3) + floor(2 * x[i]) + i % 2
    out y[i] = h[i] + i // 2
"""
    cell = reclang.loads(text, "c.rec")
    assert [v.backend for v in cell.verdicts if v.supported] == \
        ["sequential", "scan", "fft", "triton"]
    torch.manual_seed(0)
    reference = cell.module("sequential").double()
    for backend in ("sequential", "scan", "fft", "triton"):
        torch.manual_seed(0)
        m = cell.module(backend).double()
        assert_matches_reference(m, as_reference(reference), random_inputs(m, 2, 5),
                                 random_state(m, 2))


def test_pi_and_inf_are_constants_every_printer_writes():
    """-inf printed through sympy (scan, fft) was complex(-inf, 0): maximum of complex."""
    text = """cell c(N = 3):
    input x[N]
    state h[N] = 0
    h[i] <- 0.5 * h[i] + max(x[i], -inf) + max(where(x[i] > 0, x[i], -inf), 0.1 * x[i])
            + sin(pi * x[i])
    out y[i] = h[i] + min(h[i], inf) + pi
"""
    cell = reclang.loads(text, "c.rec")
    matches_sequential(cell, "scan", "fft")


RUNNING_MAX = """cell c(N = 3):
    input x[N], f[N]
    state m[N] = -inf, s[N] = 0
    m[i] <- max(m[i] + f[i], x[i])
    s[i] <- s[i] * exp(m[i] + f[i] - m[i]) + exp(x[i] - m[i])
    out y[i] = s[i] + m[i]
"""


@pytest.mark.parametrize("backend", ["sequential", "triton", "newton"])
def test_a_running_max_from_minus_inf_has_no_nan(backend):
    """From the declared initial state (-inf): finite outputs, final states and
    gradients of inputs, on every backend that runs the cell (the fused loop too)."""
    if backend == "triton":
        pytest.importorskip("triton")
    cell = reclang.loads(RUNNING_MAX, "c.rec")
    assert [v.backend for v in cell.verdicts if v.supported] == ["sequential", "triton", "newton"]
    torch.manual_seed(0)
    m = cell.module(backend).double()
    x = {k: v.requires_grad_() for k, v in random_inputs(m, 2, 6).items()}
    y, final = m(**x)
    want = [torch.cummax(x["x"].detach()[:, :t + 1], 1).values[:, -1] for t in range(6)]
    (y.sum() + final["s"].sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(final["m"]).all()
    assert all(torch.isfinite(v.grad).all() for v in x.values())
    if backend == "sequential":  # f = 0 makes m the running max of x
        m0 = m(x=x["x"].detach(), f=torch.zeros_like(x["f"]))[1]["m"]
        torch.testing.assert_close(m0, want[-1])


def test_softmax_is_torch_softmax_and_keeps_its_index():
    m = sequential("""cell c(N = 4, K = 3):
    input q[K], k[N, K], x[N]
    out y[n] = softmax(n: sum(j: q[j] * k[n, j])) + sum(l: softmax(l: x[l] * k[l, 0]) * x[l])
""")
    x = random_inputs(m, 2, 3)
    scores = torch.einsum("btj,btnj->btn", x["q"], x["k"])
    weights = torch.softmax(x["x"] * x["k"][..., 0], -1)
    want = torch.softmax(scores, -1) + (weights * x["x"]).sum(-1, keepdim=True)
    torch.testing.assert_close(m(**x)[0], want)


def test_softmax_of_large_scores_is_stable():
    m = sequential("cell c(N = 3):\n    input x[N]\n    out y[n] = softmax(n: 1000 * x[n])\n")
    x = torch.tensor([[[1.0, 2.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(m(x=x)[0], torch.softmax(1000 * x, -1))


MISUSE = [
    ("softmax over an index not in scope", "    out y = softmax(m: x[m])\n",
     "softmax(m: ...) normalizes along m, which stays an index of the result", 3, 21),
    ("softmax without an index", "    out y[n] = softmax(x[n])\n",
     "softmax needs the index it reduces: softmax(i: ...)", 3, 16),
    ("softmax of a constant", "    out y[n] = x[n] + softmax(n: 2)\n",
     "the body of softmax does not depend on n", 3, 23),
    ("pi as a name", "    pi = 3\n    out y[n] = x[n]\n",
     "'pi' is a hyperparameter or built-in and cannot be assigned", 3, 5),
    ("inf divided by inf", "    out y[n] = x[n] + inf / inf\n",
     "div of constants is not finite", 3, 23),
    ("remainder by zero", "    out y[n] = x[n] + 1 % 0\n", "mod of constants fails", 3, 23),
]


@pytest.mark.parametrize("case, body, message, line, col", MISUSE, ids=[c[0] for c in MISUSE])
def test_misuse(case, body, message, line, col):
    with pytest.raises(RecError) as info:
        reclang.loads("cell c(N = 3):\n    input x[N]\n" + body, "c.rec")
    assert message in info.value.message and (info.value.loc.line, info.value.loc.col) == \
        (line, col), str(info.value)


def test_a_state_may_start_at_minus_inf_and_pi_folds_in_initializers():
    cell = reclang.loads("cell c(N = 2):\n    input x[N]\n    param p[N] = pi / 2\n"
                         "    state m[N] = -inf\n    m[i] <- max(m[i], x[i] + p[i])\n"
                         "    out y[i] = m[i]\n", "c.rec")
    m = cell.module("sequential")
    assert m.p.tolist() == pytest.approx([math.pi / 2] * 2)
    assert m.initial_state(1)["m"].tolist() == [[-math.inf, -math.inf]]


MATRIX = """cell c(H = 2, K = 3, V = 2):
    input q[H, K], k[H, K], v[H, V], g[H, K]
    state S[H, K, V] = 0
    w[h, i] = 0.5 + 0.4 * softmax(i: g[h, i])
    S[h, i, j] <- w[h, i] * S[h, i, j]
                  + softmax(i: k[h, i]) * v[h, j] * (floor(k[h, i]) + k[h, i] % 1) * pi
    out o[h, j] = sum(i: q[h, i] * S[h, i, j])
"""


def test_the_new_operations_in_a_matrix_cell_run_on_chunk_and_triton():
    """A softmax decay and keys with floor, % and pi: the chunk backend's and the
    matrix kernels' operands (printed through sympy and Triton)."""
    cell = reclang.loads(MATRIX, "c.rec")
    assert cell.plan.form == "mat-decay"
    matches_sequential(cell, "chunk", "triton")


def test_a_state_through_softmax_is_refused_as_a_softmax_at_the_softmax():
    """softmax lowers to a max, an exp, a sum and a division; a refusal names the
    softmax (the nodes' origin), not the max it starts with, with the caret on it."""
    text = ("cell c(N = 4):\n    input x[N]\n    state s[N] = 0\n"
            "    s[i] <- 0.5 * s[i] + softmax(i: s[i] + x[i])\n    out y[i] = s[i]\n")
    verdicts = {v.backend: v.reason for v in reclang.loads(text, "c.rec").verdicts}
    for backend in ("scan", "chunk", "fft", "triton"):
        assert "c.rec:4:26: " in verdicts[backend], verdicts[backend]
        assert "read through softmax" in verdicts[backend]
        assert "reduced with max" not in verdicts[backend]


BOUNDARY = {  # x / 0.1 falls just below the integer (0.3 / 0.1 = 2.9999999999999996),
    # x * 10.0, what sympy made of it, on it: floor, //, % and >= jump there
    "diagonal": """cell c(N = 4):
    input x[N]
    state h[N] = 0
    h[i] <- 0.5 * h[i] + floor(x[i] / 0.1) + 10 * where(x[i] / 0.1 >= 3, 1, 0)
            + 100 * (x[i] / 0.1) // 1 + (2 * x[i] / 0.1) % 3
    out y[i] = h[i]
""",
    "matrix": """cell c(N = 4, V = 2):
    input x[N], v[V], q[N]
    state S[N, V] = 0
    S[i, j] <- 0.5 * S[i, j] + (floor(x[i] / 0.1) + 10 * where(x[i] / 0.1 >= 3, 1, 0)) * v[j]
    out o[j] = sum(i: q[i] * S[i, j])
""",
    "nonlinear": """cell c(N = 4):
    input x[N]
    param W[N, N] ~ normal(0, 0.3)
    state h[N] = 0
    h[i] <- tanh(sum(m: W[i, m] * h[m]) + floor(x[i] / 0.1) + where(x[i] / 0.1 >= 3, 1, 0))
    out y[i] = h[i]
""",
}


@pytest.mark.parametrize("kind", BOUNDARY)
def test_a_division_under_floor_mod_and_comparisons_is_the_specs_on_every_backend(kind):
    cell = reclang.loads(BOUNDARY[kind], "c.rec")
    backends = [v.backend for v in cell.verdicts if v.supported and v.backend != "sequential"]
    assert backends, backends
    torch.manual_seed(0)
    reference = cell.module("sequential").double()
    x = random_inputs(reference, 1, 3)
    x["x"] = torch.tensor([0.3, 0.6, 0.9, 1.2], dtype=torch.float64).expand(1, 3, 4)
    want = reference(**x)[0]
    for backend in backends:
        torch.manual_seed(0)
        got = cell.module(backend).double()(**x)[0]
        # a value on the wrong side of a jump is off by 0.1 or more; the matrix kernels'
        # dot products round at 1e-8 under the interpreter
        assert torch.allclose(got, want, rtol=0, atol=1e-6), (backend, got, want)


def matches_sequential(cell, *backends):
    """Each backend against sequential, in float64, on the same random inputs and state."""
    torch.manual_seed(0)
    reference = cell.module("sequential").double()
    for backend in backends:
        torch.manual_seed(0)
        m = cell.module(backend).double()
        assert_matches_reference(m, as_reference(reference), random_inputs(m, 2, 5),
                                 random_state(m, 2))
