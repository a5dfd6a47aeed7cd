"""lag, t and grouped heads as a user meets them: torch.compile, torch.func, pickle and
deepcopy, cell.function, reclang.nn.Stack, and names that collide with the ones the
hoisting makes (lag_x, window_x, lag1_x, t). Float64, small sizes."""

import copy
import pickle

import pytest
import torch
from test_lag import assert_same, inputs, module, random_state, run
from torch.func import functional_call, grad

import reclang

# a short convolution of grouped keys, silu, t in the input term and a lag in the readout
CELL = """
cell outside(H = 4, G = 2, K = 3, V = 2, W = 3):
    input q[H, K], k[H // G, K], v[H, V], g[H]
    param Wc[H // G, K, W] ~ normal(0, 0.5)
    state S[H, K, V] = 0
    kc[a, i] = silu(sum(w: Wc[a, i, w] * lag(k[a, i], w)))
    S[h, i, j] <- exp(-softplus(g[h])) * S[h, i, j] + kc[h // G, i] * v[h, j] * (1 + 0.01 * t)
    out o[h, j] = sum(i: q[h, i] * S[h, i, j]) + lag(v[h, j], 1)
"""


def loss(y, final):
    return y.square().sum() + sum(v.square().sum() for k, v in final.items() if k != "t")


def test_torch_compile_equals_eager_with_a_carried_history():
    m = module(CELL, "chunk")
    xs, state = inputs(m, 2, 5), random_state(m, 2)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    outs, final, grads = run(compiled, xs, state)
    grads = {k.removeprefix("_orig_mod."): v for k, v in grads.items()}  # its param names
    assert_same((outs, final, grads), run(m, xs, state))


@pytest.mark.parametrize("backend", ["sequential", "chunk"])
def test_torch_func_grad_equals_autograd(backend):
    m = module(CELL, backend)
    xs = inputs(m, 2, 5)
    params = {k: v.detach() for k, v in m.named_parameters()}

    def f(p, x):
        return loss(*functional_call(m, p, (), x))

    got = grad(f, argnums=(0, 1))(params, xs)
    leaves = [v.clone().requires_grad_() for v in (*params.values(), *xs.values())]
    want = torch.autograd.grad(f(dict(zip(params, leaves)),
                                 dict(zip(xs, leaves[len(params):]))), leaves)
    for a, b in zip((*got[0].values(), *got[1].values()), want):
        torch.testing.assert_close(a, b)


def test_pickle_and_deepcopy_keep_the_prologue():
    m = module(CELL, "chunk")
    xs, state = inputs(m, 2, 5), random_state(m, 2)
    want = run(m, xs, state)
    for other in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert_same(run(other, xs, state), want)


def test_the_function_form_continues_from_its_final_state():
    text = CELL.replace("    param Wc[H // G, K, W] ~ normal(0, 0.5)\n", "").replace(
        "sum(w: Wc[a, i, w] * lag(k[a, i], w))", "k[a, i] - 0.5 * lag(k[a, i], 2)")
    cell = reclang.loads(text, "f.rec")
    f, m = cell.function("chunk"), module(text)
    xs = list(inputs(m, 2, 7).values())
    y, final = f(*xs, output_final_state=True)
    assert sorted(final) == ["S", "lag_k", "lag_v", "t"]
    y1, s1 = f(*[x[:, :4] for x in xs], output_final_state=True)
    y2, _ = f(*[x[:, 4:] for x in xs], initial_state=s1, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    torch.testing.assert_close(y, m(*[], **dict(zip([d.name for d in m.ir.inputs], xs)))[0])


STACKED = """
cell stacked(H = 4, G = 2, K = 3, W = 3):
    input x[H, K]
    param Wc[K, W] ~ normal(0, 0.5)
    param a[H] ~ uniform(0.5, 0.9)
    state S[H, K, K] = 0
    kc[h, i] = silu(sum(w: Wc[i, w] * lag(x[h, i], w)))
    S[h, i, j] <- a[h] * S[h, i, j] + kc[(h // G) * G, i] * x[h, j] * (1 + 0.01 * t)
    out y[h, j] = sum(i: x[h, i] * S[h, i, j]) / K + lag(x[h, j], 1)
"""


def test_a_stack_carries_each_layer_s_histories():
    torch.manual_seed(0)
    s = reclang.nn.Stack(reclang.loads(STACKED, "s.rec"), 2, residual=True,
                         backend="chunk").double()
    x = torch.randn(2, 7, 4, 3, dtype=torch.float64)
    y, final = s(x=x)
    assert [sorted(f) for f in final] == [["S", "lag_x", "t"]] * 2  # x[h, i], x[h, j]: one
    y1, s1 = s(x=x[:, :3])
    y2, _ = s(x=x[:, 3:], state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    state, steps = None, []
    for t in range(7):
        out, state = s.step(x=x[:, t], state=state)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), y)
    for a, b in zip(state, final):
        assert all(torch.allclose(a[k], b[k]) for k in b)


def test_values_equal_up_to_axis_names_share_a_history_and_others_do_not():
    spec = """
cell shares(N = 3):
    input X[N, N]
    state h[N] = 0
    h[i] <- 0.5 * h[i] + lag(X[0, i], 1) + lag(X[i, 0], 1)
    out y[j] = h[j] + lag(X[0, j], 2)
"""
    ref = module(spec)
    assert sorted(ref.initial_state(1, torch.float64)) == ["h", "lag_X", "lag_X_2"]
    xs, state = inputs(ref, 2, 4), random_state(ref, 2)
    deep, shallow = sorted((state[k] for k in ("lag_X", "lag_X_2")), key=lambda v: -v.shape[1])
    rows = torch.cat([deep, xs["X"][:, :, 0]], 1)        # X[0, i] and X[0, j], 2 deep
    cols = torch.cat([shallow, xs["X"][:, :, :, 0]], 1)  # X[i, 0], 1 deep
    h, ys = state["h"], []
    for t in range(4):
        h = 0.5 * h + rows[:, 1 + t] + cols[:, t]
        ys.append(h + rows[:, t])
    torch.testing.assert_close(ref(**xs, state=state)[0], torch.stack(ys, 1))


HOSTILE = {  # the declarations, the term, and whether t is the step index
    "lag_x": ("input x[D], lag_x[D]", "lag(x[d], 1) + lag_x[d]", True),
    "t": ("input x[D], t[D]", "lag(x[d], 1) + t[d]", False),
    "window_x": ("input x[D], window_x[D]", "sum(w: Wc[d, w] * lag(x[d], w)) + window_x[d]",
                 True),
    "lag1_x": ("input x[D], lag1_x[D]",
               "sum(w: Wc[d, w] * lag(x[d], w)) + lag(x[d], 1) * lag1_x[d]", True),
}


def hostile_reference(name, xs, state, Wc, steps):
    """The final h from the definitions: ext is x after its history, lag(x, k) at step
    s is ext[depth + s - k]."""
    history = state[next(k for k in state if k.startswith("lag_x") and k not in xs)]
    ext, depth, h = torch.cat([history, xs["x"]], 1), history.shape[1], state["h"]
    for s in range(xs["x"].shape[1]):
        user = xs[name][:, s]
        if name in ("window_x", "lag1_x"):
            term = sum(Wc[:, w] * ext[:, depth + s - w] for w in range(Wc.shape[1]))
            term = term + (user if name == "window_x" else ext[:, depth + s - 1] * user)
        else:
            term = ext[:, depth + s - 1] + user
        h = 0.5 * h + term + (0.1 * (state["t"][:, None] + s) if steps else 0)
    return h


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_user_tensor_named_like_a_hoisted_value_is_kept_apart(name):
    decl, term, steps = HOSTILE[name]
    text = f"""
cell hostile(D = 3, W = 3):
    {decl}
    param Wc[D, W] ~ normal(0, 1)
    state h[D] = 0
    h[d] <- 0.5 * h[d] + {term}{" + 0.1 * t" if steps else ""}
    out y[d] = h[d]
"""
    ref, scan = module(text), module(text, "scan")
    assert [d.name for d in ref.ir.inputs] == ["x", name]
    xs, state = inputs(ref, 2, 5), random_state(ref, 2)
    assert_same(run(scan, xs, state), run(ref, xs, state))
    want = hostile_reference(name, xs, state, ref.Wc.detach(), steps)
    torch.testing.assert_close(ref(**xs, state=state)[1]["h"], want)


def test_a_state_named_t_is_the_state_and_says_it_hides_the_step_index():
    spec = """
cell n(D = 3):
    input x[D]
    state t[D] = 0
    t[d] <- 0.5 * t[d] + lag(x[d], 1)
    out y[d] = t[d]
"""
    ref = module(spec)
    assert sorted(ref.initial_state(1, torch.float64)) == ["lag_x", "t"]
    xs = inputs(ref, 2, 4)
    final = ref(**xs)[1]
    want = torch.zeros(2, 3, dtype=torch.float64)
    for step in range(4):
        want = 0.5 * want + (xs["x"][:, step - 1] if step else 0)
    torch.testing.assert_close(final["t"], want)
    with pytest.raises(reclang.RecError, match="a tensor named t hides the step index t"):
        reclang.loads(spec.replace("lag(x[d], 1)", "x[d] * t"), "n.rec")
