"""A state-free function of the keys keeps a delta rule diagonal plus low rank: sympy's
expand used to multiply sigmoid's denominators out (1/((1 + e^-k_i)(1 + e^-k_l)) as one
denominator), so sigmoid and silu keys made the transition dense (issue 18)."""

import pytest
from test_lag import assert_same, inputs, module, random_state, run

import reclang

DELTA = """
cell delta_keys(H = 2, K = 4, V = 3):
    input q[H, K], k[H, K], v[H, V], beta[H]
    state S[H, K, V] = 0
    kf[h, i] = KEY
    kS[h, j] = sum(l: kf[h, l] * S[h, l, j])
    S[h, i, j] <- S[h, i, j] - beta[h] * kf[h, i] * kS[h, j] + beta[h] * kf[h, i] * v[h, j]
    out o[h, j] = sum(i: q[h, i] * S[h, i, j])
"""

# Gated DeltaNet's keys: a projection, silu, then an L2 norm over the key axis
GATED = """
cell silu_normalized(H = 2, K = 4, V = 3):
    input q[H, K], x[H, K], v[H, V], g[H], beta[H]
    param W[H, K, K] ~ normal(0, 0.5)
    state S[H, K, V] = 0
    ks[h, i] = silu(sum(e: W[h, i, e] * x[h, e]))
    kn[h, i] = ks[h, i] / sqrt(sum(l: ks[h, l] * ks[h, l]) + 1e-6)
    kS[h, j] = sum(l: kn[h, l] * S[h, l, j])
    S[h, i, j] <- exp(-softplus(g[h])) * (S[h, i, j] - sigmoid(beta[h]) * kn[h, i] * kS[h, j])
                  + sigmoid(beta[h]) * kn[h, i] * v[h, j]
    out o[h, j] = sum(i: q[h, i] * S[h, i, j])
"""


@pytest.mark.parametrize("key", ["sigmoid(k[h, i])", "silu(k[h, i])", "tanh(k[h, i])",
                                 "k[h, i] * sigmoid(2 * k[h, i]) + 1 / (1 + k[h, i] ** 2)"])
def test_a_function_of_the_keys_keeps_the_delta_rule_low_rank(key):
    cell = reclang.loads(DELTA.replace("KEY", key), "d.rec")
    assert cell.plan.form == "dplr"
    assert cell.plan.states[0].transition.rank == 1


@pytest.mark.parametrize("T", [3, 9])
def test_silu_normalized_keys_run_on_chunk_as_on_the_loop(T):
    assert reclang.loads(GATED, "g.rec").plan.form == "dplr"
    ref, chunk = module(GATED), module(GATED, "chunk")
    xs, state = inputs(ref, 2, T), random_state(ref, 2)
    assert_same(run(chunk, xs, state), run(ref, xs, state))
    assert_same(run(chunk, xs, None), run(ref, xs, None))
