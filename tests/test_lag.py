"""lag(e, k), the step index t and subscript expressions, run: against a loop written
here from their definitions, and every backend against the sequential one in float64
(outputs, final states with the carried histories and counter, gradients of inputs,
params and initial states); two halves, step by step, lengths and cu_seqlens."""

import copy
import itertools
import pickle

import pytest
import torch

import reclang
from reclang.errors import RecError

F = torch.nn.functional
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # else triton's interpreter

CONV = """
cell conv(D = 3, W = 4):
    input x[D], g[D]
    param Wc[D, W] ~ normal(0, 1)
    param u[D] ~ normal(0, 1)
    state h[D] = 0
    c[d] = sum(w: Wc[d, w] * lag(x[d], w))
    h[d] <- sigmoid(g[d]) * h[d] + c[d] + lag(tanh(g[d]), 2) + 0.1 * t * x[d + 1] + u[D - 1 - d]
    out y[d] = h[d] * lag(x[d], 1)
"""

SHIFT = """
cell token_shift(K = 2, V = 3):
    input q[K], k[K], v[V], g[K]
    param mu[K] ~ uniform(0, 1)
    state S[K, V] = 0
    kk[i] = k[i] + mu[i] * (lag(k[i], 1) - k[i])
    S[i, j] <- exp(-softplus(g[i])) * S[i, j] + kk[i] * v[j]
    out o[j] = sum(i: q[i] * S[i, j])
"""

LTI = """
cell lti_conv(D = 3):
    input x[D]
    param a[D] ~ uniform(0.5, 0.9)
    state h[D] = 0
    h[d] <- a[d] * h[d] + lag(x[d], 1) - lag(x[d], 3) + x[d]
    out y[d] = h[d]
"""

ELMAN = """
cell elman_shift(D = 3):
    input x[D]
    param W[D, D] ~ normal(0, 0.5)
    state h[D] = 0
    h[d] <- tanh(sum(e: W[d, e] * h[e]) + lag(x[d], 1) + x[D - 1 - d])
    out y[d] = h[d]
"""

DELTA = """
cell delta_conv(H = 2, K = 4, V = 3, W = 3):
    input q[H, K], k[H, K], v[H, V], g[H], beta[H]
    param Wk[H, K, W] ~ normal(0, 0.5)
    state S[H, K, V] = 0
    kn[h, i] = sum(w: Wk[h, i, w] * lag(k[h, i], w)) * 0.5
    kS[h, j] = sum(l: kn[h, l] * S[h, l, j])
    S[h, i, j] <- exp(-softplus(g[h])) * (S[h, i, j] - beta[h] * kn[h, i] * kS[h, j])
                  + beta[h] * kn[h, i] * v[h, j]
    out o[h, j] = sum(i: q[h, i] * S[h, i, j]) + lag(v[h, j], 1)
"""

GROUPED = """
cell grouped_keys(H = 4, G = 2, K = 2, V = 3):
    input q[H, K], k[H // G, K], v[H, V], g[H, K]
    state S[H, K, V] = 0
    S[h, i, j] <- exp(-softplus(g[h, i])) * S[h, i, j] + k[h // G, i] * v[h, j]
    out o[h, j] = sum(i: q[h, i] * S[h, i, j])
"""

READOUT = """
cell gathered_readout(D = 3):
    input x[D], g[D]
    state h[D] = 0
    h[d] <- sigmoid(g[d]) * h[d] + x[d]
    out y[d] = h[d + 1] * x[d]
"""

ROLL = """
cell roll(D = 4):
    input x[D]
    state h[D] = 0
    h[d] <- 0.5 * h[d + 1] + x[d]
    out y[d] = h[D - 1 - d] + h[d]
"""


def module(spec: str, backend: str = "sequential"):
    torch.manual_seed(0)
    return reclang.loads(spec, "lag.rec").module(backend).double()


def inputs(m, B: int, T: int, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {d.name: torch.randn(B, T, *d.shape, generator=gen, dtype=torch.float64)
            for d in m.ir.inputs}


def random_state(m, B: int, seed: int = 2) -> dict:
    """Random values for every state, the carried histories and counter included."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) if k != "t"
            else torch.randint(0, 5, v.shape, generator=gen).double()
            for k, v in m.initial_state(B, torch.float64).items()}


def run(m, xs: dict, state: dict | None, **varlen):
    """Outputs, final states and the gradients of a random functional of both with
    respect to the inputs, the initial states and the params."""
    xs = {k: v.clone().requires_grad_() for k, v in xs.items()}
    state = state and {k: v.clone().requires_grad_(k != "t") for k, v in state.items()}
    y, final = m(**xs, state=state, **varlen)
    outs = y if isinstance(y, dict) else {"y": y}
    gen = torch.Generator().manual_seed(3)
    values = list(outs.values()) + [final[k] for k in sorted(final) if k != "t"]
    loss = sum((v * torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)).sum()
               for v in values)
    leaves = {**xs, **{k: v for k, v in (state or {}).items() if v.requires_grad},
              **dict(m.named_parameters())}
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return outs, final, {k: torch.zeros_like(v) if g is None else g
                         for (k, v), g in zip(leaves.items(), grads)}


def assert_same(got, want):
    for a, b in zip(got, want):
        assert set(a) == set(b)
        for k in b:
            torch.testing.assert_close(a[k], b[k], atol=1e-10, rtol=1e-8, msg=k)


def conv_reference(xs: dict, p: dict, state: dict):
    """CONV from its definition: a loop over steps reading the histories by hand."""
    x, g = xs["x"], xs["g"]
    T = x.shape[1]
    xe = torch.cat([state["lag_x"], x], 1)                  # [B, 3 + T, D]
    ge = torch.cat([state["lag_g"], torch.tanh(g)], 1)      # [B, 2 + T, D]
    h, ys = state["h"], []
    for t in range(T):
        c = sum(p["Wc"][:, w] * xe[:, 3 + t - w] for w in range(4))
        up = F.pad(x[:, t, 1:], (0, 1))                     # x[d + 1], 0 past the end
        step = (state["t"] + t)[:, None]
        h = torch.sigmoid(g[:, t]) * h + c + ge[:, t] + 0.1 * step * up + p["u"].flip(0)
        ys.append(h * xe[:, 2 + t])
    final = {"h": h, "lag_x": xe[:, -3:], "lag_g": ge[:, -2:], "t": state["t"] + T}
    return {"y": torch.stack(ys, 1)}, final


def test_the_carried_states_are_named_and_shaped_as_documented():
    m = module(CONV)
    state = m.initial_state(2, torch.float64)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "h": (2, 3), "lag_x": (2, 3, 3), "lag_g": (2, 2, 3), "t": (2,)}
    assert all((v == 0).all() for v in state.values())


@pytest.mark.parametrize("T", [1, 2, 7])
def test_lag_t_and_subscripts_match_their_definition(T):
    m = module(CONV)
    xs, state = inputs(m, 2, T), random_state(m, 2)
    params = dict(m.named_parameters())
    y, final = m(**xs, state=state)
    want_y, want_final = conv_reference(xs, params, state)
    torch.testing.assert_close(y, want_y["y"])
    for k in want_final:
        torch.testing.assert_close(final[k], want_final[k])
    y0, _ = m(**xs)  # no state: zeros before the start, t from 0
    torch.testing.assert_close(y0, conv_reference(xs, params, m.initial_state(2, torch.float64))
                               [0]["y"])


@pytest.mark.parametrize("spec", [CONV, SHIFT, ROLL, ELMAN])
def test_two_halves_and_step_by_step_equal_one_call(spec):
    m = module(spec)
    xs, state = inputs(m, 2, 7), random_state(m, 2)
    y, final = m(**xs, state=state)
    y = y if isinstance(y, dict) else {"y": y}
    first, mid = m(**{k: v[:, :3] for k, v in xs.items()}, state=state)
    second, end = m(**{k: v[:, 3:] for k, v in xs.items()}, state=mid)
    s, steps = state, []
    for t in range(7):
        y_t, s = m.step(**{k: v[:, t] for k, v in xs.items()}, state=s)
        steps.append(y_t if isinstance(y_t, dict) else {"y": y_t})
    for k in y:
        halves = [o if isinstance(o, dict) else {"y": o} for o in (first, second)]
        torch.testing.assert_close(torch.cat([h[k] for h in halves], 1), y[k])
        torch.testing.assert_close(torch.stack([o[k] for o in steps], 1), y[k])
    for k in final:
        torch.testing.assert_close(end[k], final[k])
        torch.testing.assert_close(s[k], final[k])


@pytest.mark.parametrize("spec, backend", [(CONV, "scan"), (SHIFT, "chunk"), (LTI, "fft"),
                                           (READOUT, "scan"), (DELTA, "chunk"),
                                           (GROUPED, "chunk")])
@pytest.mark.parametrize("T", [1, 5, 13])
def test_parallel_backends_equal_the_sequential_one(spec, backend, T):
    ref, other = module(spec), module(spec, backend)
    xs, state = inputs(ref, 2, T), random_state(ref, 2)
    assert_same(run(other, xs, state), run(ref, xs, state))
    assert_same(run(other, xs, None), run(ref, xs, None))


@pytest.mark.parametrize("spec", [CONV, SHIFT, ELMAN, READOUT])
def test_triton_equals_the_sequential_backend_with_packed_sequences(spec):
    """One small case per kernel (diagonal scan, matrix state, fused loop): the packed
    sequences go to the kernels in one call, their prologue right-padded."""
    ref, tri = module(spec).to(DEVICE), module(spec, "triton").to(DEVICE)
    def on(tensors):
        return {k: v.to(DEVICE) for k, v in tensors.items()}

    xs, state = on(inputs(ref, 2, 5)), on(random_state(ref, 2))
    assert_same(run(tri, xs, state), run(ref, xs, state))
    xs, state, cu = on(inputs(ref, 1, 9)), on(random_state(ref, 3)), torch.tensor([0, 4, 5, 9])
    assert_same(run(tri, xs, state, cu_seqlens=cu), run(ref, xs, state, cu_seqlens=cu))
    xs, state, lengths = on(inputs(ref, 3, 6)), on(random_state(ref, 3)), torch.tensor([6, 2, 4])
    assert_same(run(tri, xs, state, lengths=lengths), run(ref, xs, state, lengths=lengths))


def test_lengths_keep_the_history_of_each_sequence_s_end():
    m = module(CONV)
    xs, state = inputs(m, 3, 6), random_state(m, 3)
    lengths = torch.tensor([6, 2, 4])
    y, final = m(**xs, state=state, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        one = {k: v[b:b + 1, :n] for k, v in xs.items()}
        y_b, final_b = m(**one, state={k: v[b:b + 1] for k, v in state.items()})
        torch.testing.assert_close(y[b:b + 1, :n], y_b)
        assert (y[b, n:] == 0).all()
        for k in final:
            torch.testing.assert_close(final[k][b:b + 1], final_b[k])


def test_packed_sequences_do_not_lag_across_their_boundaries():
    m = module(CONV)
    xs, state = inputs(m, 1, 9), random_state(m, 3)
    cu = [0, 4, 5, 9]
    y, final = m(**xs, state=state, cu_seqlens=torch.tensor(cu))
    for n, (a, b) in enumerate(itertools.pairwise(cu)):
        y_n, final_n = m(**{k: v[:, a:b] for k, v in xs.items()},
                         state={k: v[n:n + 1] for k, v in state.items()})
        torch.testing.assert_close(y[:, a:b], y_n)
        for k in final:
            torch.testing.assert_close(final[k][n:n + 1], final_n[k])


def test_a_state_read_at_a_computed_subscript_runs_on_the_loop_alone():
    m = module(ROLL)
    x = inputs(m, 2, 5)["x"]
    h, ys = torch.zeros(2, 4, dtype=torch.float64), []
    for t in range(5):
        h = 0.5 * F.pad(h[:, 1:], (0, 1)) + x[:, t]
        ys.append(h.flip(-1) + h)
    torch.testing.assert_close(m(x=x)[0], torch.stack(ys, 1))
    cell = reclang.loads(ROLL, "roll.rec")
    for backend in ("scan", "chunk", "fft", "triton"):
        reason = cell.verdict(backend).reason
        assert not cell.supports(backend) and "roll.rec:5:" in reason, reason
        assert "computed subscript" in reason, reason
    with pytest.raises(RecError, match="computed subscript h\\[\\(d \\+ 1\\)\\]"):
        cell.module("scan")


@pytest.mark.parametrize("update, jacobian", [
    ("a[d] <- 0.5 * a[d] + x[d]\n    b[d] <- 0.5 * b[d] + a[D - 1 - d]", "b: dense"),
    ("u[d] = a[d] * 2\n    a[d] <- 0.5 * u[d + 1] + x[d]\n    b[d] <- b[d]", "a: dense")])
def test_a_computed_subscript_through_an_intermediate_is_a_mixing_read(update, jacobian):
    """Read through a new state or a let, a shift of state elements is neither affine
    nor diagonal: every parallel backend refuses it at the read."""
    spec = f"""
cell c(D = 3):
    input x[D]
    state a[D] = 0, b[D] = 0
    {update}
    out y[d] = a[d] + b[d]
"""
    cell = reclang.loads(spec, "c.rec")
    assert f"Jacobian {jacobian}" in cell.plan.summary
    assert cell.supports("sequential")
    for backend in ("scan", "chunk", "fft", "triton"):
        assert "computed subscript" in cell.verdict(backend).reason


def test_a_diagonal_readout_of_a_matrix_state_is_refused_with_a_reason():
    spec = """
cell m(K = 3):
    input q[K], k[K], v[K], g[K]
    state S[K, K] = 0
    S[i, j] <- exp(-softplus(g[i])) * S[i, j] + k[i] * v[j]
    out o[i] = S[i, i] + sum(j: q[j] * S[j, i])
"""
    cell = reclang.loads(spec, "m.rec")
    assert "S is read without contracting its key axis i" in cell.verdict("chunk").reason
    m, x = module(spec), inputs(module(spec), 1, 4)
    S, want = torch.zeros(1, 3, 3, dtype=torch.float64), []
    for t in range(4):
        S = torch.exp(-F.softplus(x["g"][:, t]))[..., None] * S + \
            x["k"][:, t, :, None] * x["v"][:, t, None, :]
        want.append(torch.diagonal(S, dim1=-2, dim2=-1) + torch.einsum("bj,bji->bi",
                                                                       x["q"][:, t], S))
    torch.testing.assert_close(m(**x)[0], torch.stack(want, 1))


def test_a_gather_of_params_is_computed_once_as_a_derived_param():
    cell = reclang.loads(CONV, "conv.rec")
    kinds = {d.name: d.kind for d in cell.prologue.derived}
    assert sorted(kinds.values()) == ["input", "input", "input", "input", "input", "param"]
    assert cell.plan.form == "diag"  # the shifts leave the recurrence diagonal
    forms = [reclang.loads(s, "x.rec").plan.form for s in (SHIFT, DELTA, GROUPED)]
    assert forms == ["mat-decay", "dplr", "mat-decay"]
    sizes = [cell.hoisted.decls[d.name].shape for d in cell.prologue.derived]
    assert (3,) in sizes and (3, 4) not in sizes  # the convolution, not its window
    twice = reclang.loads(CONV.replace("out y[d] = h[d]", "out y[d] = t * h[d]"), "c.rec")
    assert len(twice.prologue.derived) == len(cell.prologue.derived)  # one t for both
    assert "_lag.convolved(" in cell.prologue_source() and "_lag." not in cell.source("scan")
    assert reclang.loads(ELMAN.replace("lag(x[d], 1)", "x[d]").replace("x[D - 1 - d]", "0"),
                         "e.rec").prologue_source() is None


VARYING = """
cell varying_weights(D = 3, W = 3):
    input x[D], a[D, W]
    param Wc[D, W] ~ normal(0, 1)
    param z[W] ~ normal(0, 1)
    state h[D] = 0
    h[d] <- 0.5 * h[d] + sum(w: a[d, w] * lag(x[d], w)) + sum(w: lag(x[d], w) * 2 * Wc[d, w])
    out y[d] = h[d] + sum(w: Wc[d, w] * lag(x[d], w)) + lag(x[d], 4) + sum(w: z[w] * lag(x[d], w))
"""


def test_a_short_convolution_is_one_depthwise_conv1d():
    """A window read only by a sum with time-invariant weights is one conv1d over the
    extended sequence (a history deeper than the window: lag(x, 4)), whatever the order
    of the product, a kernel shared by every d too; weights that vary in time keep the
    window and its einsum."""
    text = reclang.loads(VARYING, "v.rec").prologue_source()
    assert text.count("_lag.convolved(") == 3 and text.count("_lag.window(") == 1
    assert "_lag.window(" not in reclang.loads(DELTA, "d.rec").prologue_source()
    ref = module(VARYING)
    xs, state = inputs(ref, 2, 5), random_state(ref, 2)
    p = dict(ref.named_parameters())
    ext = torch.cat([state["lag_x"], xs["x"]], 1)
    steps = [torch.stack([ext[:, 4 + t - w] for w in range(3)], -1) for t in range(5)]
    h, want = state["h"], []
    for t, win in enumerate(steps):
        h = 0.5 * h + (xs["a"][:, t] * win).sum(-1) + (win * 2 * p["Wc"]).sum(-1)
        want.append(h + (p["Wc"] * win).sum(-1) + ext[:, t] + (p["z"] * win).sum(-1))
    torch.testing.assert_close(ref(**xs, state=state)[0], torch.stack(want, 1))


def test_subscript_expressions_read_zero_outside_the_tensor():
    spec = """
cell subscripts(N = 4, H = 2, K = 3, G = 2):
    input x[N], y[N], S[H, K, K], k[H, K]
    out next[i: N] = x[i + 1]
    out roll[i: N] = x[(i + 1) % N]
    out rev[i: N] = x[N - 1 - i]
    out grouped[h: H * G, i] = k[h // G, i]
    out even[i: 2] = x[2 * i]
    out pad[i: N + 2] = x[i - 1]
    out cat[i: 2 * N] = x[i - 0] + y[i - N]
    out diag[h, i] = S[h, i, i]
"""
    m = module(spec)
    xs = inputs(m, 2, 3)
    x, y, S, k = xs["x"], xs["y"], xs["S"], xs["k"]
    out, _ = m(**xs)
    want = {"next": F.pad(x[..., 1:], (0, 1)), "rev": x.flip(-1), "even": x[..., ::2],
            "roll": x.roll(-1, -1), "grouped": k.repeat_interleave(2, dim=-2),
            "pad": F.pad(x, (1, 1)), "cat": torch.cat([x, y], -1),
            "diag": torch.diagonal(S, dim1=-2, dim2=-1)}
    for k, v in want.items():
        torch.testing.assert_close(out[k], v, msg=k)
    assert reclang.loads(spec, "s.rec").prologue is not None


def test_a_module_with_a_prologue_pickles_and_copies():
    m = module(CONV)
    xs, state = inputs(m, 2, 4), random_state(m, 2)
    y, final = m(**xs, state=state)
    for other in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        y2, final2 = other(**xs, state=state)
        torch.testing.assert_close(y2, y)
        assert all(torch.equal(final2[k], final[k]) for k in final)


def test_the_function_form_returns_the_carried_states_with_the_others():
    """cell.function() (flash-linear-attention's convention): with a history to carry,
    the final state is the dict, so that a next call can continue from it."""
    spec = """
cell f(D = 3):
    input x[D]
    state h[D] = 0
    h[d] <- 0.5 * h[d] + lag(x[d], 1) + x[d]
    out y[d] = h[d]
"""
    f = reclang.loads(spec, "f.rec").function("sequential")
    x = torch.randn(1, 6, 3, dtype=torch.float64)
    y, final = f(x, output_final_state=True)
    assert sorted(final) == ["h", "lag_x"]
    y1, s1 = f(x[:, :4], output_final_state=True)
    y2, _ = f(x[:, 4:], initial_state=s1, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
