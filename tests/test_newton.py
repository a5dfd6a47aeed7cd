"""The newton backend against the sequential one, in float64 to 1e-10: outputs, final
states and the gradients of inputs, params and initial states, for every nonlinear
catalogue cell it accepts, at T = 1, a prime, and one long T; the Jacobian printed from
the lane form against reverse mode; packed variable lengths in one solve; the
sequential finish past max_iter; quasi-Newton and damping; its Jacobian structures and
its refusals."""

import dataclasses
import inspect
import re

import pytest
import torch
from helpers import (
    SPECS,
    _grads,
    _loss,
    as_reference,
    cells_on,
    one_thread,  # noqa: F401  (an autouse fixture: one intra-op thread)
    random_inputs,
    random_state,
    small,
)
from hypothesis import HealthCheck, given, settings
from test_fused_random_cells import cells as nonlinear_cells

import reclang
from reclang.errors import RecError
from reclang.functions import FUNCTIONS
from reclang.runtime import newton
from reclang.schedule import NewtonSchedule

# the nonlinear catalogue cells, by their plan (cheaper than every backend's verdict)
NAMES = sorted(p.stem for p in SPECS.glob("*.rec") if small(p.stem).plan.form == "nonlinear")
PRINTED = [n for n in NAMES if small(n).form("newton").printed is not None]
TOL = 1e-10


def pair(name, schedule=None, **hypers):
    cell = reclang.load(SPECS / f"{name}.rec", **hypers) if hypers else small(name)
    torch.manual_seed(0)
    m = cell.module("newton", schedule=schedule).double()
    return m, cell.module("sequential").double()


def assert_same(m, reference, inputs, state=None, **varlen):
    """Outputs, final states and every gradient equal to TOL (absolute, no rtol)."""
    params = dict(m.named_parameters())
    runs = []
    for run in (lambda x, s0: m(state=s0, **x, **varlen),
                lambda x, s0: reference({**x, **varlen}, params, s0)):
        xs = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        s0 = None if state is None else {k: v.clone().requires_grad_()
                                         for k, v in state.items()}
        y, final = run(xs, s0)
        y = y if isinstance(y, dict) else {m.ir.outputs[0].arg: y}
        runs.append((y, final, _grads(_loss(y, final), {**xs, **(s0 or {}), **params})))
    for got, want in zip(*runs):
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=TOL, rtol=0,
                                       msg=lambda e, k=k: f"{k}: {e}")


def test_newton_runs_every_nonlinear_catalogue_cell():
    assert set(cells_on("newton")) == set(NAMES)
    assert {"para_gru", "para_lstm", "indrnn", "lstm", "gru", "elman", "slstm"} <= set(NAMES)


@pytest.mark.parametrize("T", [1, 13])
@pytest.mark.parametrize("name", NAMES)
def test_matches_sequential(name, T):
    m, s = pair(name)
    x = random_inputs(m, 2, T)
    assert_same(m, as_reference(s), x, random_state(m, 2))
    assert_same(m, as_reference(s), x, None)
    assert newton.last_report.steps == T


def test_every_cell_with_a_lane_form_gets_the_printed_jacobian():
    """The default path where the lane form exists (test_matches_sequential runs it);
    LMU (states of two shapes) and TTT (a sum over a value the step computes) keep
    reverse mode, and say why."""
    assert {"para_gru", "para_lstm", "indrnn", "slstm", "gru", "lstm", "elman"} <= set(PRINTED)
    for name in NAMES:  # (test_generated_code checks these sources for unused names)
        source = small(name).source("newton")
        assert ("linearized=linearized" in source) == (name in PRINTED)
    for name in ("lmu", "ttt_linear"):
        jac = small(name).form("newton")
        assert jac.how == "its rows by reverse mode (no lane form)"
        assert re.search(rf"{name}\.rec:\d+", jac.describe())


def _cells(name, T: int = 5):
    """The printed path's and reverse mode's f on packed states, each with its prelude's
    tokens, at the same random inputs; and random previous states."""
    runs = []
    for derivatives in ("sympy", "reverse"):
        m, _ = pair(name, NewtonSchedule(derivatives=derivatives))
        code, params = m._generated, {k: v.detach() for k, v in m.named_parameters()}
        _, seqs = code.prelude(*random_inputs(m, 2, T).values(), **params)
        runs.append((newton._Cell(code.SOLVER, code.core, tuple(params), params.values(),
                                  getattr(code, "linearized", None)),
                     [x.flatten(0, 1) for x in seqs]))
    state = random_state(m, 2 * T)
    return runs, code.SOLVER.layout.pack([state[n] for n in code.SOLVER.names])


@pytest.mark.parametrize("name", PRINTED)
def test_the_printed_jacobian_is_reverse_modes(name):
    """f and J (and its diagonal, quasi-Newton's) from sympy.diff of the lane form equal
    reverse mode's through the core, per token, in float64."""
    runs, z = _cells(name)
    assert runs[0][0].linearized is not None and runs[1][0].linearized is None
    for diagonal in (False, True):
        (f, J), (f_rev, J_rev) = (cell.linearize(tokens, z, diagonal) for cell, tokens in runs)
        torch.testing.assert_close(f, f_rev, atol=1e-12, rtol=0)
        torch.testing.assert_close(J, J_rev, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["para_gru", "para_lstm", "slstm", "gru"])
def test_reverse_mode_still_matches_sequential(name):
    """NewtonSchedule(derivatives="reverse"): the path of cells without a lane form."""
    m, s = pair(name, NewtonSchedule(derivatives="reverse"))
    assert not hasattr(m._generated, "linearized")
    assert_same(m, as_reference(s), random_inputs(m, 2, 13), random_state(m, 2))


def test_sympy_derivatives_asked_for_without_a_lane_form_is_an_error():
    with pytest.raises(RecError, match=r"lmu\.rec:\d+:\d+: NewtonSchedule\(derivatives="
                       r"'sympy'\): the newton backend finds its rows by reverse mode"):
        small("lmu").module("newton", schedule=NewtonSchedule(derivatives="sympy"))


def test_a_derivative_that_is_an_argument_is_not_overwritten():
    """∂h'/∂h = h, the state the linearization was given: the solver zeroes J at every
    first step in place, which must not reach the states (b and the backward read them)."""
    cell = reclang.loads("cell c(N = 3):\n    input x[N]\n    state h[N] = 0\n"
                         "    h[n] <- h[n] * h[n] / 2 + tanh(x[n]) / 4\n    out y[n] = h[n]\n",
                         "c.rec")
    m, s = cell.module("newton").double(), cell.module("sequential").double()
    assert "_d_0_0 = _s_h" in cell.source("newton")
    assert_same(m, as_reference(s), random_inputs(m, 2, 9), random_state(m, 2))
    packed = random_inputs(m, 1, 9)
    assert_same(m, as_reference(s), packed, random_state(m, 3),
                cu_seqlens=torch.tensor([0, 4, 5, 9]))


# one cell per Jacobian structure and path: packed sequences (and a right-padded batch,
# which the module packs) in ONE Newton solve, each from its own initial state
@pytest.mark.parametrize("name", ["para_gru", "para_lstm", "slstm", "gru", "lmu"])
def test_variable_lengths(name, monkeypatch):
    m, s = pair(name)
    solves = []
    solve = newton.solve
    monkeypatch.setattr(newton, "solve", lambda *a: solves.append(a[2][0].shape) or solve(*a))
    x = random_inputs(m, 3, 8)
    assert_same(m, as_reference(s), x, random_state(m, 3), lengths=[7, 2, 5])
    assert solves == [(1, 14, *solves[0][2:])]  # the 7 + 2 + 5 tokens, together
    packed = random_inputs(m, 1, 9)
    for state in (random_state(m, 4), None):
        assert_same(m, as_reference(s), packed, state, cu_seqlens=torch.tensor([0, 4, 5, 6, 9]))


@pytest.mark.parametrize("name", ["para_lstm", "gru"])
def test_packed_sequences_finish_sequentially_across_their_boundaries(name):
    """max_iter = 2: the steps from the first unconverged token run one by one, each
    sequence from its own initial state; lengths of 1 and a padded tail nobody uses."""
    m, s = pair(name, NewtonSchedule(max_iter=2))
    x = random_inputs(m, 4, 12)
    assert_same(m, as_reference(s), x, random_state(m, 4), lengths=[1, 9, 1, 6])
    report = newton.last_report
    assert (report.iterations, report.sequential_from, report.steps) == (2, 2, 17)
    assert_same(m, as_reference(s), x, None, lengths=[1, 1, 1, 1])


def test_packed_sequences_with_the_adjoint_one_step_at_a_time():
    """GRU at N = 65: quasi-Newton and the adjoint as one vjp per step, cut at the
    sequences' boundaries too."""
    m, s = pair("gru", D=2, N=65)
    assert m._generated.SOLVER.adjoint == "loop"
    assert_same(m, as_reference(s), random_inputs(m, 1, 6), random_state(m, 3),
                cu_seqlens=torch.tensor([0, 1, 4, 6]))


def test_a_long_sequence():
    """T = 4096 for a small diagonal cell: still a handful of iterations."""
    m, s = pair("para_gru", D=2, N=3)
    x = random_inputs(m, 1, 4096)
    assert_same(m, as_reference(s), x, random_state(m, 1))
    assert newton.last_report.converged and newton.last_report.iterations < 12


@pytest.mark.parametrize("name", ["para_lstm", "gru"])
def test_max_iter_reached_finishes_sequentially_and_stays_exact(name):
    m, s = pair(name, NewtonSchedule(max_iter=2))
    x = random_inputs(m, 2, 29)
    assert_same(m, as_reference(s), x, random_state(m, 2))
    report = newton.last_report
    assert (report.iterations, report.converged) == (2, False)
    assert report.sequential_from == 2  # the first two steps are exact after two iterations


def test_a_tolerance_too_tight_to_reach_still_gives_the_loop():
    """Newton's iterates stall at the scan's rounding; the steps from the first that still
    moves run one by one."""
    m, s = pair("para_gru", NewtonSchedule(max_iter=6, tol=1e-300))
    assert_same(m, as_reference(s), random_inputs(m, 2, 11), None)
    assert not newton.last_report.converged and newton.last_report.sequential_from >= 6


def test_diverging_iterates_stop_and_finish_sequentially():
    """h = tanh(50 h + x) is bounded, but from the first guess its Jacobian is about 50
    at every step: the linear recurrence of the first iteration overflows to inf. The
    iteration stops there and the steps run one by one from the first that moved."""
    cell = reclang.loads("cell c(N = 2):\n    input x[N]\n    state h[N] = 0\n"
                         "    h[n] <- tanh(50 * h[n] + x[n])\n    out y[n] = h[n]\n", "c.rec")
    m, s = cell.module("newton").double(), cell.module("sequential").double()
    assert_same(m, as_reference(s), random_inputs(m, 1, 300), None)
    report = newton.last_report
    assert report.iterations < 5 and not report.converged and report.sequential_from < 5


@pytest.mark.parametrize("name", ["gru", "para_lstm"])
def test_quasi_newton_and_damping_keep_the_result(name):
    m, s = pair(name)
    x = random_inputs(m, 2, 19)
    assert_same(m, as_reference(s), x, None)
    exact = newton.last_report.iterations
    for schedule in (NewtonSchedule(jacobian="diagonal"), NewtonSchedule(damping=1.0)):
        m, s = pair(name, schedule)
        assert_same(m, as_reference(s), x, None)
        assert newton.last_report.iterations > exact


@pytest.mark.parametrize("jacobian", ["exact", "diagonal"])
def test_jacobian_rows_in_groups_change_nothing(jacobian):
    """LSTM's 8x8 block by reverse mode, its rows 3 at a time (3 + 3 + 2): the same
    iterates."""
    x = random_inputs(pair("lstm")[0], 2, 11)
    runs = []
    for rows in (16, 3):
        m, s = pair("lstm", NewtonSchedule(jacobian=jacobian, rows=rows, derivatives="reverse"))
        assert_same(m, as_reference(s), x, None)
        runs.append((newton.last_report.iterations, m(**x)[0]))
    assert runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1], atol=1e-15, rtol=0)


@pytest.mark.parametrize("name, kind, size", [
    ("para_gru", "diagonal", 1), ("indrnn", "diagonal", 1),
    ("para_lstm", "block-diagonal", 2),   # h and c of one unit
    ("slstm", "block-diagonal", 32),      # per head: 8 units x 4 states
    ("gru", "dense", 4), ("lstm", "dense", 8),
    ("lmu", "dense", 10),                 # states of two shapes: no lane form
])
def test_jacobian_structure(name, kind, size):
    jac = small(name).form("newton")
    assert (jac.kind, jac.size) == (kind, size)
    assert jac.describe() in small(name).verdict("newton").reason


def test_inspect_names_the_structure(capsys):
    from reclang.cli import main
    main(["inspect", str(SPECS / "para_lstm.rec"), "--backend", "newton"])
    out = capsys.readouterr().out
    assert "newton     yes  runs nonlinear: Newton with a block-diagonal Jacobian (2x2 " \
        "blocks): each unit of h, c reads only its own unit of every state" in out
    assert "kind: block-diagonal" in out and "NewtonSchedule(max_iter=32" in out


def test_a_jacobian_too_large_for_the_dense_scan():
    """GRU at N = 65: a 65x65 dense block. The default is quasi-Newton (said in the
    verdict); the exact Jacobian, asked for, is a RecError at the state's update."""
    cell = reclang.load(SPECS / "gru.rec", D=2, N=65)
    assert "quasi-Newton by default" in cell.verdict("newton").reason
    assert "quasi=True" in cell.source("newton") and "adjoint='loop'" in cell.source("newton")
    with pytest.raises(RecError, match=r"gru\.rec:\d+:\d+: the newton backend's exact "
                       r"Jacobian has 65x65 blocks .* NewtonSchedule\(jacobian='diagonal'\)"):
        cell.module("newton", schedule=NewtonSchedule(jacobian="exact"))
    m, s = pair("gru", D=2, N=65)
    assert_same(m, as_reference(s), random_inputs(m, 1, 5), None)


def test_a_function_without_a_derivative_is_refused_at_its_use(monkeypatch):
    monkeypatch.setitem(FUNCTIONS, "tanh", dataclasses.replace(FUNCTIONS["tanh"],
                                                               derivative=None))
    verdict = small("elman").verdict("newton")
    assert not verdict.supported
    assert re.fullmatch(r"elman\.rec:\d+:\d+: tanh has no derivative in the function "
                        r"table; the newton backend needs ∂f/∂h of the step", verdict.reason)


@pytest.mark.parametrize("bad", [{"max_iter": 0}, {"tol": -1.0}, {"tol": float("nan")},
                                 {"jacobian": "dense"}, {"damping": -0.5}, {"rows": 0}])
def test_nonsense_schedules_are_errors(bad):
    with pytest.raises(RecError, match="NewtonSchedule"):
        NewtonSchedule(**bad)


def test_low_precision_inputs_and_pickling():
    """bf16 inputs are computed in float32 (outputs bf16, states float32), to the
    float32 tolerance; a pickled module runs the same."""
    import pickle

    cell = small("para_lstm")
    torch.manual_seed(0)
    m, s = cell.module("newton"), cell.module("sequential")
    s.load_state_dict(m.state_dict())
    x = random_inputs(m, 2, 17)["x"].to(torch.bfloat16)
    (y, final), (want, _) = m(x=x), s(x=x)
    assert y.dtype == torch.bfloat16 and final["c"].dtype == torch.float32
    torch.testing.assert_close(y, want, atol=1e-2, rtol=0)
    torch.testing.assert_close(pickle.loads(pickle.dumps(m))(x=x)[0], y, atol=0, rtol=0)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nonlinear_cells())
def test_random_nonlinear_cells(text):
    """Any mix of the language's functions (floor, %, // included: zero derivatives,
    discontinuous steps), a weighted sum over the units, a `for` block: the loop's
    values and gradients, to 1e-10."""
    cell = reclang.loads(text, "random.rec")
    torch.manual_seed(0)
    m, s = cell.module("newton").double(), cell.module("sequential").double()
    assert_same(m, as_reference(s), random_inputs(m, 2, 7), random_state(m, 2))


@pytest.mark.parametrize("name", ["para_lstm", "gru"])
def test_a_non_finite_input_at_step_t_reaches_no_earlier_output(name):
    """A NaN or inf at step t: the iterate is not finite from t on, the iteration stops
    and the steps from the first that moved run one by one; outputs before t are the
    loop's, and the rest is what the loop gives too (NaN included)."""
    m, s = pair(name)
    s.load_state_dict(m.state_dict())
    for bad in (float("nan"), float("inf")):
        x = random_inputs(m, 2, 20)
        x["x"][:, 11] = bad
        y, want = m(**x)[0], s(**x)[0]
        assert torch.isfinite(want[:, :11]).all()
        torch.testing.assert_close(y, want, atol=TOL, rtol=0, equal_nan=True)


def test_an_initial_state_computed_from_params():
    """h_0 = tanh(w): w's gradient comes through the initial state as well (J_0ᵀ λ_0)."""
    cell = reclang.loads("cell c(N = 3):\n    input x[N]\n    param w[N] ~ normal(0, 1)\n"
                         "    param U[N, N] ~ normal(0, 0.5)\n    state h[N] = tanh(w)\n"
                         "    h[n] <- tanh(sum(m: U[n, m] * h[m]) + x[n])\n"
                         "    out y[n] = h[n] * w[n]\n", "c.rec")
    torch.manual_seed(0)
    m, s = cell.module("newton").double(), cell.module("sequential").double()
    assert_same(m, as_reference(s), random_inputs(m, 2, 9), None)


def test_the_state_free_prelude_runs_once_per_call_not_per_iteration(monkeypatch):
    """W x + b reads no state: computed once on all tokens; an iteration evaluates the core."""
    m, s = pair("para_gru")
    generated, calls = m._generated, []
    prelude = generated.prelude
    monkeypatch.setattr(generated, "prelude", lambda *a, **k: calls.append(1) or prelude(*a, **k))
    assert_same(m, as_reference(s), random_inputs(m, 2, 13), random_state(m, 2))
    assert len(calls) == 1 and newton.last_report.iterations > 1
    assert "einsum" in inspect.getsource(prelude)
    assert "einsum" not in inspect.getsource(generated.core)


def _grads_of(m, x):
    """Outputs and the gradients of a loss in x and every param, by autograd."""
    x = x.clone().requires_grad_()
    y = m(x=x)[0]
    params = dict(m.named_parameters())
    return y, torch.autograd.grad(y.square().sum(), [x, *params.values()])


def test_under_torch_compile_values_and_gradients():
    """The solve is a graph break (it branches on convergence) and runs eagerly; dynamo
    traces the rest ("eager": no kernels generated, which would take minutes here)."""
    m, s = pair("para_gru")
    s.load_state_dict(m.state_dict())
    x = random_inputs(m, 2, 7)["x"]
    for got, want in zip(_grads_of(torch.compile(m, backend="eager"), x), _grads_of(s, x)):
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_torch_func_functional_call_and_grad():
    m, s = pair("para_lstm")
    s.load_state_dict(m.state_dict())
    x = random_inputs(m, 2, 7)["x"]
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, x):
        return torch.func.functional_call(m, p, (), {"x": x})[0].square().sum()

    got = torch.func.grad(loss, argnums=(0, 1))(params, x)
    want = _grads_of(s, x)[1]
    for g, w in zip([got[1], *got[0].values()], want):
        torch.testing.assert_close(g, w, atol=TOL, rtol=0)


def test_vmap_is_refused_with_a_reason():
    m, _ = pair("para_gru")
    x = random_inputs(m, 2, 5)["x"]
    with pytest.raises(RuntimeError, match="newton backend does not run under torch.func.vmap"):
        torch.func.vmap(lambda x: m(x=x)[0])(x[None])


@pytest.mark.parametrize("name", ["para_gru", "para_lstm", "indrnn", "slstm", "gru", "lmu"])
def test_prelude_and_core_bind_no_name_they_do_not_read(name):
    """Each prints only the param-only values (lmu's A, B) and sizes (T) it reads; the
    printed step (linearized) only the constants and weights it reads."""
    from test_generated_code import unused

    assert unused(small(name).source("newton")) == []


def test_an_infinite_initial_state_meets_no_zero_times_infinity():
    """A running max from -inf: step 0 is f(h_0) itself (the linearization's 0 · inf
    would be NaN), the first guess is finite, and the result is the loop's."""
    cell = reclang.loads("""cell c(N = 2):
    input x[N]
    state m[N] = -inf
    m[n] <- max(m[n] - 1, x[n])
    out y[n] = m[n]
""", "c.rec")
    x = torch.randn(3, 7, 2, dtype=torch.float64, requires_grad=True)
    (ys, _), (yn, _) = (cell.module(b).double()(x=x) for b in ("sequential", "newton"))
    assert newton.last_report.sequential_from is None
    torch.testing.assert_close(yn, ys, rtol=0, atol=1e-12)
    gs, gn = (torch.autograd.grad(y.sum(), x)[0] for y in (ys, yn))
    torch.testing.assert_close(gn, gs, rtol=0, atol=1e-12)
