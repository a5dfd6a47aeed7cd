"""The analyzer: structure is found semantically, so every spelling of a cell gets the
same plan; verdicts say why a backend cannot run a cell, with a location."""

import json
from pathlib import Path

import pytest
import sympy

import reclang

ATTN = "cell c(H = 2, K = 4, V = 3):\n    input q[H, K], k[H, K], v[H, V]"
READ = "    out o[h, j] = sum(i: q[h, i] * S[h, i, j]) * K ** -0.5\n"

SPELLINGS = {
    "delta_net": [
        ATTN + ", beta[H]\n    state S[H, K, V] = 0\n"
        "    u[h, j] = v[h, j] - sum(i: k[h, i] * S[h, i, j])\n"
        "    S[h, i, j] <- S[h, i, j] + beta[h] * k[h, i] * u[h, j]\n" + READ,
        ATTN + ", beta[H]\n    state S[H, K, V] = 0\n"
        "    S[h, i, j] <- S[h, i, j] - beta[h] * k[h, i] * sum(l: k[h, l] * S[h, l, j])\n"
        "                  + beta[h] * k[h, i] * v[h, j]\n" + READ,
        ATTN + ", beta[H]\n    state S[H, K, V] = 0\n"
        "    kS[h, j] = sum(l: k[h, l] * S[h, l, j])\n"
        "    bk[h, i] = beta[h] * k[h, i]\n"
        "    S[h, i, j] <- S[h, i, j] + bk[h, i] * v[h, j] - bk[h, i] * kS[h, j]\n" + READ,
        # (I - beta k kᵀ) S + beta k vᵀ with the identity written out
        ATTN + ", beta[H]\n    state S[H, K, V] = 0\n"
        "    I[i: K, l: K] = where(i == l, 1.0, 0.0)\n"
        "    S[h, i, j] <- sum(l: (I[i, l] - beta[h] * k[h, i] * k[h, l]) * S[h, l, j])\n"
        "                  + beta[h] * k[h, i] * v[h, j]\n" + READ,
    ],
    "gla": [
        ATTN + ", g[H, K]\n    state S[H, K, V] = 0\n"
        "    S[h, i, j] <- exp(g[h, i]) * S[h, i, j] + k[h, i] * v[h, j]\n" + READ,
        ATTN + ", g[H, K]\n    state S[H, K, V] = 0\n"
        "    a[h, i] = exp(g[h, i])\n    kv[h, i, j] = k[h, i] * v[h, j]\n"
        "    S[h, i, j] <- a[h, i] * S[h, i, j] + kv[h, i, j]\n" + READ,
        ATTN + ", g[H, K]\n    state S[H, K, V] = 0\n"
        "    S[h, i, j] <- v[h, j] * k[h, i] + S[h, i, j] / exp(-g[h, i])\n" + READ,
    ],
    "gated_delta_net": [
        ATTN + ", g[H], beta[H]\n    state S[H, K, V] = 0\n"
        "    S[h, i, j] <- exp(g[h]) * (S[h, i, j] - beta[h] * k[h, i] * "
        "sum(l: k[h, l] * S[h, l, j])) + beta[h] * k[h, i] * v[h, j]\n" + READ,
        ATTN + ", g[H], beta[H]\n    state S[H, K, V] = 0\n"
        "    u[h, j] = v[h, j] - sum(l: k[h, l] * exp(g[h]) * S[h, l, j])\n"
        "    S[h, i, j] <- exp(g[h]) * S[h, i, j] + beta[h] * k[h, i] * u[h, j]\n" + READ,
        ATTN + ", g[H], beta[H]\n    state S[H, K, V] = 0\n"
        "    D[h, i, j] = exp(g[h]) * S[h, i, j]\n"
        "    S[h, i, j] <- D[h, i, j] + beta[h] * k[h, i]\n"
        "                  * (v[h, j] - sum(l: k[h, l] * D[h, l, j]))\n"
        + READ,
    ],
    "mamba_s6": [
        """cell m(D = 4, N = 3, R = 2):
    input x[D]
    param A_log[D, N] = log(1 + arange(N))
    param Wdt[D, R], Wr[R, D], Wb[N, D], Wc[N, D] ~ normal(0, 0.5)
    param bdt[D] = 0, Dskip[D] = 1
    dt[d] = softplus(sum(r: Wdt[d, r] * sum(e: Wr[r, e] * x[e])) + bdt[d])
    state s[D, N] = 0
    s[d, n] <- exp(-dt[d] * exp(A_log[d, n])) * s[d, n]
               + dt[d] * sum(e: Wb[n, e] * x[e]) * x[d]
    out y[d] = sum(n: sum(e: Wc[n, e] * x[e]) * s[d, n]) + Dskip[d] * x[d]
""",
        """cell m(D = 4, N = 3, R = 2):
    input x[D]
    param A_log[D, N] = log(1 + arange(N))
    param Wdt[D, R], Wr[R, D], Wb[N, D], Wc[N, D] ~ normal(0, 0.5)
    param bdt[D] = 0, Dskip[D] = 1
    state s[D, N] = 0
    low[r] = sum(e: Wr[r, e] * x[e])
    dt[d] = log(1 + exp(sum(r: Wdt[d, r] * low[r]) + bdt[d]))
    A[d, n] = -exp(A_log[d, n])
    dA[d, n] = exp(dt[d] * A[d, n])
    B[n] = sum(e: Wb[n, e] * x[e])
    C[n] = sum(e: Wc[n, e] * x[e])
    s[d, n] <- dA[d, n] * s[d, n] + dt[d] * B[n] * x[d]
    out y[d] = sum(n: C[n] * s[d, n]) + Dskip[d] * x[d]
""",
        """cell m(D = 4, N = 3, R = 2):
    input x[D]
    param A_log[D, N] = log(1 + arange(N))
    param Wdt[D, R], Wr[R, D], Wb[N, D], Wc[N, D] ~ normal(0, 0.5)
    param bdt[D] = 0, Dskip[D] = 1
    state s[D, N] = 0
    dt[d] = softplus(sum(r, e: Wdt[d, r] * Wr[r, e] * x[e]) + bdt[d])
    s[d, n] <- s[d, n] / exp(dt[d] * exp(A_log[d, n])) + x[d] * dt[d] * sum(e: x[e] * Wb[n, e])
    out y[d] = Dskip[d] * x[d] + sum(n, e: Wc[n, e] * x[e] * s[d, n])
""",
    ],
    "min_gru": [
        """cell g(D = 3, N = 4):
    input x[D]
    param Wz[N, D], Wh[N, D] ~ normal(0, 0.5)
    state h[N] = 0
    z[n] = sigmoid(sum(d: Wz[n, d] * x[d]))
    ht[n] = sum(d: Wh[n, d] * x[d])
    h[n] <- (1 - z[n]) * h[n] + z[n] * ht[n]
    out y[n] = h[n]
""",
        """cell g(D = 3, N = 4):
    input x[D]
    param Wz[N, D], Wh[N, D] ~ normal(0, 0.5)
    state h[N] = 0
    zp[n] = sum(d: Wz[n, d] * x[d])
    h[n] <- sigmoid(-zp[n]) * h[n] + sigmoid(zp[n]) * sum(d: Wh[n, d] * x[d])
    out y[n] = h[n]
""",
        """cell g(D = 3, N = 4):
    input x[D]
    param Wz[N, D], Wh[N, D] ~ normal(0, 0.5)
    state h[N] = 0
    z[n] = 1 / (1 + exp(-sum(d: Wz[n, d] * x[d])))
    h[n] <- h[n] + z[n] * (sum(d: Wh[n, d] * x[d]) - h[n])
    out y[n] = h[n]
""",
    ],
}

EXPECTED_FORM = {"delta_net": "dplr", "gla": "mat-decay", "gated_delta_net": "dplr",
                 "mamba_s6": "diag", "min_gru": "diag"}


@pytest.mark.parametrize("cell", SPELLINGS)
def test_every_spelling_gives_the_same_plan(cell):
    plans = [reclang.loads(text, f"{cell}_{k}.rec").plan for k, text in
             enumerate(SPELLINGS[cell])]
    assert plans[0].form == EXPECTED_FORM[cell]
    for other in plans[1:]:
        assert other.signature() == plans[0].signature()
        for a, b in zip(plans[0].states, other.states):
            difference = sympy.simplify((a.transition.decay - b.transition.decay).rewrite(
                sympy.exp))
            assert difference == 0, (a.transition.decay, b.transition.decay)


def test_delta_net_plan_in_words():
    plan = reclang.loads(SPELLINGS["delta_net"][0], "delta.rec").plan
    s = plan.states[0]
    assert s.transition.kind == "dplr" and s.transition.rank == 1
    assert s.transition.mix_axes == ("i",) and s.transition.decay == 1
    assert (s.input_term.key_axes, s.input_term.value_axes) == (("i",), ("j",))
    assert "dplr, rank 1" in plan.summary
    text = plan.describe()
    assert "S' = (I + (-beta[h]*k[h, i])(k[h, l])ᵀ) S + (beta[h]*k[h, i])(v[h, j])ᵀ" in text


def test_gla_decay_is_key_wise_and_log_space_safe():
    plan = reclang.loads(SPELLINGS["gla"][0]).plan
    t = plan.states[0].transition
    assert t.decay_axes == ("h", "i") and t.positive and not t.time_invariant
    assert "key-wise decay along i" in plan.summary


def test_nonlinear_verdict_names_the_term_and_its_location():
    text = """cell gru_like(N = 3):
    input x[N]
    state h[N] = 0
    h[n] <- tanh(x[n] + h[n])
    out y[n] = h[n]
"""
    cell = reclang.loads(text, "g.rec")
    plan = cell.plan
    assert plan.form == "nonlinear"
    scan = cell.verdict("scan")
    assert not scan.supported
    assert "g.rec:4:13: h is read through tanh: the update of h is not affine in h" in scan.reason
    assert plan.states[0].jacobian == "diagonal"


def test_jacobian_structures():
    dense = reclang.loads("cell e(N = 3):\n    input x[N]\n    param U[N, N] ~ normal(0, 1)\n"
                          "    state h[N] = 0\n    h[n] <- tanh(sum(m: U[n, m] * h[m]) + x[n])\n"
                          "    out y[n] = h[n]\n").plan
    assert dense.states[0].jacobian == "dense"
    block = reclang.loads("cell b(G = 2, N = 3):\n    input x[G, N]\n"
                          "    param R[G, N, N] ~ normal(0, 1)\n    state h[G, N] = 0\n"
                          "    h[g, n] <- tanh(sum(m: R[g, n, m] * h[g, m]) + x[g, n])\n"
                          "    out y[g, n] = h[g, n]\n").plan
    assert block.states[0].jacobian.startswith("block-diagonal")


def jacobian_of(update: str, extra: str = "", axes: str = "n") -> str:
    """The Jacobian structure of one state h with the axes `axes`, each of size 3."""
    shape = ", ".join("N" for _ in axes.split(", "))
    return reclang.loads(f"cell j(N = 3):\n    input x[{shape}]\n    state h[{shape}] = 0\n"
                         f"{extra}    {update}\n    out y[{axes}] = h[{axes}]\n"
                         ).plan.states[0].jacobian


def test_jacobian_sees_reductions_relabelled_reads_and_transposes():
    """A read of h[n] under a reduction over n, through an intermediate that a sum reads,
    or with its axes swapped is not the unit's own value: softmax(n: h[n]) was called
    diagonal, and so was TTT-Linear's W, whose update reads err = Σ_i W[i, j] k[i]."""
    assert jacobian_of("h[n] <- softmax(n: h[n] + x[n])") == "dense"
    assert jacobian_of("h[n] <- tanh(sum(m: u[m]) + x[n])", "    u[m] = tanh(h[m])\n") == "dense"
    assert jacobian_of("h[n] <- tanh(u[n] + x[n])", "    u[m] = tanh(h[m])\n") == "diagonal"
    assert jacobian_of("h[a, b] <- tanh(h[b, a] + x[a, b])", axes="a, b") == "dense"
    assert jacobian_of("h[a, b] <- tanh(sum(c: h[a, c]) + x[a, b])", axes="a, b") == \
        "block-diagonal (blocks along a, mixing b)"
    ttt = reclang.load(Path(__file__).parent.parent / "specs" / "ttt_linear.rec").plan
    assert ttt.states[1].jacobian == "block-diagonal (blocks along h, j, mixing i)"


def test_time_invariant_and_dense_and_coupled_forms():
    lti = reclang.loads("cell s(N = 3):\n    input x[N]\n    param a[N] = 0.5\n"
                        "    state h[N] = 0\n    h[n] <- a[n] * h[n] + x[n]\n"
                        "    out y[n] = h[n]\n").plan
    assert lti.form == "diag-lti"
    dense = reclang.loads("cell d(N = 3):\n    input x[N]\n    param A[N, N] ~ normal(0, 1)\n"
                          "    state m[N] = 0\n    m[n] <- sum(l: A[n, l] * m[l]) + x[n]\n"
                          "    out y[n] = m[n]\n").plan
    assert dense.form == "dense" and dense.states[0].transition.mix_axes == ("n",)
    coupled = reclang.loads("cell c(N = 3):\n    input x[N], a[N]\n    state p[N] = 0, m[N] = 0\n"
                            "    p[n] <- a[n] * p[n] - x[n] * m[n]\n"
                            "    m[n] <- m[n] + p[n]\n    out y[n] = m[n]\n").plan
    assert coupled.form == "coupled"
    assert coupled.states[1].coupled_with == ("p",)


def test_running_max_with_rescaled_sums_is_associative():
    text = """cell attn(H = 2, K = 3, V = 2):
    input k[H, K], v[H, V]
    param q[H, K] ~ normal(0, 1)
    state m[H] = -1e30, a[H, V] = 0, c[H] = 0
    s[h] = sum(i: q[h, i] * k[h, i])
    before[h] = m[h]
    m[h] <- max(m[h], s[h])
    a[h, j] <- a[h, j] * exp(before[h] - m[h]) + v[h, j] * exp(s[h] - m[h])
    c[h] <- c[h] * exp(before[h] - m[h]) + exp(s[h] - m[h])
    out o[h, j] = a[h, j] / c[h]
"""
    plan = reclang.loads(text).plan
    assert plan.form == "associative" and plan.states[0].monoid == "max"
    assert plan.readouts[0].kind == "pointwise"


def test_readout_kinds_and_partition():
    text = """cell r(H = 2, K = 3, V = 2):
    input q[H, K], k[H, K], v[H, V], f[H]
    state S[H, K, V] = 0, n[H, K] = 0
    decay[h] = exp(f[h])
    S[h, i, j] <- decay[h] * S[h, i, j] + k[h, i] * v[h, j]
    n[h, i] <- decay[h] * n[h, i] + k[h, i]
    num[h, j] = sum(i: q[h, i] * S[h, i, j])
    den[h] = max(abs(sum(i: q[h, i] * n[h, i])), 1)
    out o[h, j] = num[h, j] / den[h]
    out raw[h, j] = num[h, j]
"""
    plan = reclang.loads(text).plan
    assert plan.form == "mat-decay" and "scalar decay per h" in plan.summary
    kinds = {r.name: r.kind for r in plan.readouts}
    assert kinds == {"o": "pointwise", "raw": "linear"}
    assert plan.partition == {"decay": "prelude", "S'": "core", "n'": "core",
                              "num": "epilogue", "den": "epilogue", "o": "epilogue",
                              "raw": "epilogue"}


def test_json_plan():
    data = json.loads(reclang.loads(SPELLINGS["gla"][0]).to_json())
    assert data["form"] == "mat-decay"
    assert data["states"][0]["input"]["kind"] == "outer"
    assert {b["backend"] for b in data["backends"]} >= {"sequential", "chunk", "scan"}


def test_states_without_axes():
    """A scalar state (no axes) is analyzed and runs, on both backends."""
    import torch

    cell = reclang.loads("cell s():\n    input x\n    state c = 0\n    c <- c + x\n"
                         "    out y = c\n")
    assert cell.plan.form == "diag-lti" and "c' = c + x" in cell.plan.describe()
    for backend in ("sequential", "scan"):
        y, state = cell.module(backend)(x=torch.ones(2, 5))
        assert torch.equal(y[0], torch.arange(1.0, 6.0)) and state["c"].shape == (2,)
