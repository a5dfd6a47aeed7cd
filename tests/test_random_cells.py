"""Random valid cells (hypothesis): the full-sequence code (which hoists state-free work
out of its loop) and the step code (which computes everything per step) must agree, for
any mix of prelude, core and epilogue statements; so must a sequence split in two. The
cells have a state updated in a `for` block (its counter as a subscript and a value), a
running max from -inf, and the terms use //, %, floor, pi and softmax; a second strategy
adds lag, t and subscript expressions (the module carries histories across calls)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reclang

# expressions over the index n (size N); d (size D) is reduced where it appears
N_TERMS = ["g[n]", "u[n]", "h[n]", "sum(d: W[n, d] * x[d])", "sum(d: S[n, d] * x[d])",
           "0.5", "sum(d: x[d]) * u[n]", "a[n]", "Z[1, n]", "m * u[n]", "hp[n]",
           "max(d: S[n, d])", "sum(d: bc[n, d])", "g[n] % 0.7", "(u[n] // 0.5) * 0.1",
           "floor(2 * g[n])", "softmax(n: g[n] * u[n])", "sum(d: softmax(d: x[d]) * W[n, d])",
           "sin(pi * g[n])"]
ND_TERMS = ["S[n, d]", "W[n, d]", "x[d]", "g[n] * x[d]", "h[n] * W[n, d]", "bc[n, d]",
            "hp[n] * x[d]"]
FUNCTIONS = ["tanh({})", "sigmoid({})", "exp(-abs({}))", "({})", "-{}", "softplus({}) * 0.1"]


def expression(terms, depth):
    leaf = st.sampled_from(terms)
    if depth == 0:
        return leaf
    inner = expression(terms, depth - 1)
    return st.one_of(
        leaf,
        st.tuples(st.sampled_from(FUNCTIONS), inner).map(lambda t: t[0].format(t[1])),
        st.tuples(inner, st.sampled_from([" + ", " - ", " * "]), inner).map("".join),
    )


# lag, t and subscript expressions (history carried across calls: full, step and split
# agree only if the module keeps the last values of each lagged expression)
LAG_TERMS = ["lag(g[n], 1)", "lag(tanh(g[n]), 2)", "sum(d: W[n, d] * lag(x[d], 1))",
             "sum(w: Z[w, n] * lag(g[n], w))", "sum(w: Z[w, n] * h[n] * lag(g[n], w))",
             "0.1 * t", "lag(sum(d: x[d]), 3) * u[n]", "g[1 - n]", "g[n + 1]",
             "lag(g[n + 1], 1)", "x[2 * n]", "lag(0.1 * t, 1)", "g[(n + 1) % 2]",
             "sum(d: W[n, d] * x[d // 2])", "t % 3", "lag(floor(t / 2), 1)"]
ND_LAG_TERMS = ["lag(x[d], 1) * g[n]", "x[2 - d] * g[n]", "lag(g[n] * x[d], 2)"]


@st.composite
def cells(draw, n_terms=tuple(N_TERMS), nd_terms=tuple(ND_TERMS)):
    n_terms, nd_terms = list(n_terms), list(nd_terms)
    a = draw(expression([t for t in n_terms if "a[n]" not in t and "hp" not in t], 2))
    h_new = draw(expression(n_terms, 2))
    s_new = draw(expression(nd_terms, 1))
    y = draw(expression(n_terms, 2))
    c_new = draw(expression(n_terms + ["c[n]", "r * c[n]", "Z[r, n] * c[n]"], 2))
    order = draw(st.permutations(["h", "S", "c", "mx"]))
    updates = {"h": f"    h[n] <- tanh({h_new})\n",
               "S": f"    S[n, d] <- 0.5 * S[n, d] + tanh({s_new})\n",
               "c": f"    for r in 2:\n        c[n] <- 0.5 * c[n] + tanh({c_new})\n",
               "mx": "    mx[n] <- max(mx[n], g[n])\n"}
    return ("cell r(D = 3, N = 2):\n"
            "    input x[D], g[N]\n"
            "    param W[N, D] ~ normal(0, 0.5)\n    param u[N] ~ normal(0, 1)\n"
            "    param Z[2, N] ~ normal(0, 1)\n"
            "    state h[N] = 0, S[N, D] = 0, c[N] = 0, mx[N] = -inf\n"
            "    m = max(d: x[d])\n"
            "    hp[n] = h[n] + 0.1 * u[n]\n"                  # the previous h
            "    bc[n: N, d: D] = g[n] * 0.5\n"                # broadcast along d
            "    out early[n] = hp[n] * g[n]\n"
            f"    a[n] = g[n] * ({a})\n" + "".join(updates[k] for k in order) +
            f"    out y[n] = u[n] * ({y}) + c[n] + mx[n]\n")


@settings(max_examples=int(__import__("os").environ.get("RANDOM_CELLS", 60)), deadline=None)
@given(cells(), st.integers(1, 9))
def test_random_cells_forward_step_and_split_agree(text, T):
    check_forward_step_and_split(text, T)


@settings(max_examples=int(__import__("os").environ.get("RANDOM_CELLS", 30)), deadline=None)
@given(cells(tuple(N_TERMS + LAG_TERMS), tuple(ND_TERMS + ND_LAG_TERMS)), st.integers(1, 9))
def test_random_cells_with_lag_t_and_subscripts_forward_step_and_split_agree(text, T):
    check_forward_step_and_split(text, T)


def check_forward_step_and_split(text: str, T: int):
    torch.manual_seed(0)
    cell = reclang.loads(text, "random.rec")
    assert cell.plan.form in ("diag", "diag-lti", "mat-decay", "dplr", "dense", "coupled",
                              "associative", "nonlinear")
    m = cell.module().double()
    x = {"x": torch.randn(2, T, 3, dtype=torch.float64),
         "g": torch.randn(2, T, 2, dtype=torch.float64)}
    y, final = m(**x)
    assert all(torch.isfinite(v).all() for v in y.values())
    s, steps = None, []
    for t in range(T):
        y_t, s = m.step(state=s, **{k: v[:, t] for k, v in x.items()})
        steps.append(y_t)
    for name in y:
        torch.testing.assert_close(torch.stack([o[name] for o in steps], 1), y[name])
    for k in final:
        torch.testing.assert_close(s[k], final[k])
    cut = T // 2
    if cut:
        y1, s1 = m(**{k: v[:, :cut] for k, v in x.items()})
        y2, s2 = m(state=s1, **{k: v[:, cut:] for k, v in x.items()})
        for name in y:
            torch.testing.assert_close(torch.cat([y1[name], y2[name]], 1), y[name])
        for k in final:
            torch.testing.assert_close(s2[k], final[k])
