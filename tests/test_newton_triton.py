"""The newton backend's Triton path (reclang/codegen/newton_triton.py, the kernels of
backends/templates/newton_scan.py.jinja) for cells with a diagonal Jacobian, under the
interpreter in float64, against the sequential backend to 1e-10 (absolute): outputs,
final states, gradients of inputs, params and initial states, at T = 1 and at primes
(one of them over two tiles of 64 steps, not a multiple of the tile); the sequential finish past
max_iter, damping, diverging iterates, an infinite initial state, variable lengths;
when the path is taken and when it is refused."""

import pytest
import torch
from helpers import as_reference, random_inputs, random_state, small
from test_newton import assert_same

import reclang
from reclang.errors import RecError
from reclang.runtime import newton, newton_triton
from reclang.schedule import NewtonSchedule

TRITON = NewtonSchedule(triton=True)


@pytest.fixture
def solves(monkeypatch):
    """The number of solves the Triton path has run."""
    calls = []
    solve = newton_triton.solve
    monkeypatch.setattr(newton_triton, "solve", lambda *a: calls.append(1) or solve(*a))
    return calls


def pair(cell, schedule=TRITON):
    torch.manual_seed(0)
    m = cell.module("newton", schedule=schedule).double()
    return m, as_reference(cell.module("sequential").double())


# 67: a prime over two tiles of 64 steps
@pytest.mark.parametrize("name, T", [("para_gru", 1), ("para_gru", 67), ("indrnn", 13)])
def test_diagonal_catalogue_cells_match_sequential(name, T, solves):
    m, reference = pair(small(name))
    x = random_inputs(m, 2, T)
    assert_same(m, reference, x, random_state(m, 2))
    assert_same(m, reference, x, None)
    assert len(solves) == 2 and newton.last_report.steps == T
    assert newton.last_report.converged


# heads, an operand along one axis of the state only (u[n] of h[g, n]), a constant per
# unit, an output of the previous state and one of another shape
HEADS = """cell c(D = 3, H = 2, N = 5):
    input x[D], u[N]
    param W[H, N, D] ~ normal(0, 0.5)
    param p[H, N] ~ normal(0, 1)
    param q[N] ~ uniform(-1, 1)
    state h[H, N] = 0
    z[g, n] = sum(d: W[g, n, d] * x[d])
    out before[g, n] = h[g, n] * u[n]
    h[g, n] <- tanh(z[g, n] + q[n] * h[g, n]) * sigmoid(u[n] + p[g, n] * h[g, n])
    out y[g, n] = h[g, n]
    out total = sum(g: sum(n: h[g, n] * p[g, n]))
"""


def test_heads_operands_along_one_axis_and_outputs_of_other_shapes(solves):
    m, reference = pair(reclang.loads(HEADS, "c.rec"))
    x = random_inputs(m, 3, 11)
    assert_same(m, reference, x, random_state(m, 3))
    assert len(solves) == 1


def test_max_iter_reached_finishes_sequentially_and_stays_exact(solves):
    m, reference = pair(small("para_gru"), NewtonSchedule(max_iter=2, triton=True))
    assert_same(m, reference, random_inputs(m, 2, 29), random_state(m, 2))
    report = newton.last_report
    assert (report.iterations, report.converged, report.sequential_from) == (2, False, 2)
    assert len(solves) == 1


def test_damping_takes_more_iterations_to_the_same_result(solves):
    x = random_inputs(pair(small("para_gru"))[0], 2, 11)
    iterations = []
    for schedule in (TRITON, NewtonSchedule(damping=1.0, triton=True)):
        m, reference = pair(small("para_gru"), schedule)
        assert_same(m, reference, x, None)
        iterations.append(newton.last_report.iterations)
    assert iterations[1] > iterations[0] and len(solves) == 2


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's exp overflows: meant
def test_diverging_iterates_stop_and_finish_sequentially(solves):
    """h = tanh(50 h + x): the first iteration's linear recurrence overflows to inf (the
    kernel marks those steps' moves inf); the steps from the first that moved run one by
    one in the finish kernel."""
    cell = reclang.loads("cell c(N = 2):\n    input x[N]\n    state h[N] = 0\n"
                         "    h[n] <- tanh(50 * h[n] + x[n])\n    out y[n] = h[n]\n", "c.rec")
    m, reference = pair(cell)
    assert_same(m, reference, random_inputs(m, 1, 300), None)
    report = newton.last_report
    assert report.iterations < 5 and not report.converged and report.sequential_from < 5
    assert len(solves) == 1


# the kernel computes f − J h at step 0 too, 0 · inf there, and keeps f instead
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_an_infinite_initial_state_meets_no_zero_times_infinity(solves):
    cell = reclang.loads("cell c(N = 2):\n    input x[N]\n    state m[N] = -inf\n"
                         "    m[n] <- max(m[n] - 1, x[n])\n    out y[n] = m[n]\n", "c.rec")
    x = torch.randn(3, 7, 2, dtype=torch.float64, requires_grad=True)
    (ys, _), (yt, _) = (cell.module(b, schedule=s).double()(x=x) for b, s in
                        (("sequential", None), ("newton", TRITON)))
    assert newton.last_report.sequential_from is None and len(solves) == 1
    torch.testing.assert_close(yt, ys, rtol=0, atol=1e-12)
    gs, gt = (torch.autograd.grad(y.sum(), x)[0] for y in (ys, yt))
    torch.testing.assert_close(gt, gs, rtol=0, atol=1e-12)


def test_variable_lengths(solves):
    """Packed sequences (and lengths, which the module packs) take the PyTorch path's
    one solve of all their tokens (the kernels run whole sequences only)."""
    m, reference = pair(small("para_gru"))
    assert_same(m, reference, random_inputs(m, 3, 7), random_state(m, 3), lengths=[7, 2, 5])
    packed = {k: v[:1, :] for k, v in random_inputs(m, 1, 9).items()}
    assert_same(m, reference, packed, random_state(m, 3), cu_seqlens=torch.tensor([0, 4, 5, 9]))
    assert len(solves) == 0 and newton.last_report.steps == 9


def test_the_path_on_cpu_tensors_by_default_is_pytorch(solves):
    """The default (triton=None) holds both paths and runs the kernels on CUDA tensors
    only; triton=False holds the PyTorch path alone."""
    cell = small("para_gru")
    assert "def forward_triton(" in cell.source("newton")
    assert "def forward_triton(" not in cell.source("newton",
                                                    schedule=NewtonSchedule(triton=False))
    m, reference = pair(cell, NewtonSchedule())
    assert_same(m, reference, random_inputs(m, 1, 5), None)
    assert solves == []


def test_the_generated_kernel_cites_the_spec_lines():
    source = small("para_gru").source("newton")
    start = source.index("def para_gru_linearized(")
    body = source[start:source.index("return f, J", start)]
    for line in (16, 17, 18, 19):  # z, r, candidate, the update
        assert f"# para_gru.rec:{line}: " in body
    assert "J = " in body and "f = " in body


@pytest.mark.parametrize("name, why", [
    ("gru", r"gru\.rec:\d+:\d+: the newton backend's Triton kernel needs a diagonal Jacobian"),
    ("para_lstm", (r"para_lstm\.rec:\d+:\d+: the newton backend's Triton kernel runs cells "
                  "with one state; c is a second"))])
def test_cells_without_a_diagonal_jacobian_are_refused_when_asked(name, why):
    assert "def forward_triton(" not in small(name).source("newton")
    with pytest.raises(RecError, match=r"NewtonSchedule\(triton=True\): " + why):
        small(name).module("newton", schedule=TRITON)


def test_a_nonsense_triton_setting_is_an_error():
    with pytest.raises(RecError, match="triton='yes' must be True, False or None"):
        NewtonSchedule(triton="yes")


def test_float32_operands_and_states(solves):
    """The kernels' dtype paths in float32 (the tiles, the numbers they print, the carry):
    to float32's default tolerances (atol 1e-5, rtol 1.3e-6); the iterates converge to
    eps^(3/4) · (1 + |h|) and Newton's next step is at about eps^(3/2), so what remains
    is the rounding of a few float32 operations."""
    torch.manual_seed(0)
    cell = small("para_gru")
    m, s = cell.module("newton", schedule=TRITON), cell.module("sequential")
    s.load_state_dict(m.state_dict())
    x = torch.randn(2, 70, 3, requires_grad=True)
    (y, _), (want, _) = m(x=x), s(x=x)
    assert y.dtype == torch.float32 and len(solves) == 1
    torch.testing.assert_close(y, want)
    grads = [torch.autograd.grad(v.square().sum(), x)[0] for v in (y, want)]
    torch.testing.assert_close(*grads)


def test_torch_func_functional_call_and_grad_and_the_vmap_refusal(solves):
    """torch.func runs the backward on its wrapped tensors, whose storage a kernel cannot
    read: the adjoint kernel is launched from a Function's forward, which gets them
    unwrapped."""
    m, _ = pair(small("para_gru"))
    s = small("para_gru").module("sequential").double()
    s.load_state_dict(m.state_dict())
    x = random_inputs(m, 2, 7)["x"]
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(module):
        return lambda p, x: torch.func.functional_call(module, p, (), {"x": x})[0].square().sum()

    got, want = (torch.func.grad(loss(k), argnums=(0, 1))(params, x) for k in (m, s))
    assert len(solves) == 1
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    with pytest.raises(RuntimeError, match="newton backend does not run under torch.func.vmap"):
        torch.func.vmap(lambda x: m(x=x)[0])(x[None])
