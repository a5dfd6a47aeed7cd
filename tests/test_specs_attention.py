"""Linear-attention cells with a matrix state (linear attention, simple GLA, RetNet,
GLA, RWKV-6, mLSTM) against hand loops written from their papers' equations (float64;
outputs, final states and gradients), and against the papers' parallel (attention) form."""

import pytest
import torch
from helpers import (LENGTHS, assert_matches_reference, assert_step_matches_forward, load,
                     outer, random_inputs, random_state)

F = torch.nn.functional
H, K, V, B = 2, 4, 3, 2
SCALE = K ** -0.5




def read(q, S):
    """scale · qᵀ S per head: [B, H, K] x [B, H, K, V] -> [B, H, V]."""
    return torch.einsum("bhk,bhkv->bhv", q * SCALE, S)


def retnet_gamma():
    """RetNet's fixed decay per head, γ_h = 1 − 2^(−5−h)."""
    return 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float64))


def decayed_attention(decay):
    """S_t = decay_t ⊙ S_{t-1} + k_t v_tᵀ, o_t = scale q_tᵀ S_t, where decay(x, t) is
    broadcast against S [B, H, K, V]."""
    def reference(x, params, state):
        S, outs = state["S"], []
        for t in range(x["q"].shape[1]):
            S = decay(x, t) * S + outer(x["k"][:, t], x["v"][:, t])
            outs.append(read(x["q"][:, t], S))
        return {"o": torch.stack(outs, 1)}, {"S": S}
    return reference


def rwkv6_reference(x, params, state):
    S, outs = state["S"], []
    u = params["u"]
    for t in range(x["r"].shape[1]):
        kv = outer(x["k"][:, t], x["v"][:, t])
        outs.append(read(x["r"][:, t], S + u[..., None] * kv))   # previous state + bonus
        S = torch.exp(x["w"][:, t])[..., None] * S + kv
    return {"o": torch.stack(outs, 1)}, {"S": S}


def mlstm_denominator(q, n):
    """max(|scale · qᵀ n|, 1) per head."""
    return torch.clamp((q * SCALE * n).sum(-1).abs(), min=1.0)


def mlstm_reference(x, params, state):
    S, n, outs = state["S"], state["n"], []
    for t in range(x["q"].shape[1]):
        f = torch.sigmoid(x["f"][:, t])[..., None]          # [B, H, 1]
        i = torch.exp(x["i"][:, t])[..., None]
        S = f[..., None] * S + i[..., None] * outer(x["k"][:, t], x["v"][:, t])
        n = f * n + i * x["k"][:, t]
        q = x["q"][:, t]
        outs.append(read(q, S) / mlstm_denominator(q, n)[..., None])
    return {"o": torch.stack(outs, 1)}, {"S": S, "n": n}


# name -> (reference, input transforms). Decaying gates are log values <= 0.
CELLS = {
    "linear_attn": (decayed_attention(lambda x, t: 1.0), {}),
    "simple_gla": (decayed_attention(lambda x, t: torch.exp(x["g"][:, t])[..., None, None]),
                   {"g": F.logsigmoid}),
    "retnet": (decayed_attention(lambda x, t: retnet_gamma()[:, None, None]), {}),
    "gla": (decayed_attention(lambda x, t: torch.exp(x["g"][:, t])[..., None]),
            {"g": lambda g: F.logsigmoid(g) / 4}),
    "rwkv6": (rwkv6_reference, {"w": lambda w: -torch.exp(w / 2)}),   # w = −exp(ω)
    "mlstm": (mlstm_reference, {"i": lambda i: -F.softplus(i)}),      # moderate: exp(i) <= 1
}


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("with_state", [False, True])
def test_against_reference(name, T, with_state):
    reference, transforms = CELLS[name]
    m = load(name, H=H, K=K, V=V)
    x = random_inputs(m, B, T, **transforms)
    s = random_state(m, B) if with_state else None
    assert_matches_reference(m, reference, x, s)
    assert_step_matches_forward(m, x, s)


# name -> the log decay of S along (t, h, i) as a function of the inputs, [B, T, H, K]-broadcastable
LOG_DECAY = {
    "linear_attn": lambda x: torch.zeros(1, 1, 1, 1, dtype=torch.float64),
    "retnet": lambda x: torch.log(retnet_gamma())[None, None, :, None],
    "simple_gla": lambda x: x["g"][..., None],
    "gla": lambda x: x["g"],
}


def parallel_form(q, k, v, log_decay):
    """The attention form the papers train with: o_t = scale Σ_{s<=t} (q_t ⊙ Π_{s<r<=t}
    α_r)·k_s v_s, with the decay products as exp of differences of cumulative log gates."""
    T = q.shape[1]
    G = log_decay.expand(*q.shape).cumsum(1)                  # [B, T, H, K]
    gap = G[:, :, None] - G[:, None, :]                        # [B, t, s, H, K]
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None, None]
    decay = torch.where(causal, gap, float("-inf")).exp()
    scores = torch.einsum("bthi,bshi,btshi->bhts", q, k, decay)
    return SCALE * torch.einsum("bhts,bshj->bthj", scores, v)


@pytest.mark.parametrize("name", LOG_DECAY)
def test_recurrence_equals_parallel_form(name):
    """From a zero state, the recurrence gives the (QKᵀ ⊙ D) V form of the papers
    (Katharopoulos et al. eq. 5, RetNet's parallel retention, GLA's parallel form)."""
    m = load(name, H=H, K=K, V=V)
    x = random_inputs(m, B, 13, **CELLS[name][1])
    y, _ = m(**x)
    torch.testing.assert_close(y, parallel_form(x["q"], x["k"], x["v"], LOG_DECAY[name](x)))


def test_retnet_decays_each_head_by_its_own_gamma():
    """With k = 0 nothing is written, so S_T = γ_h^T S_0 head by head."""
    m = load("retnet", H=H, K=K, V=V)
    T = 7
    x = random_inputs(m, B, T, k=torch.zeros_like)
    s0 = random_state(m, B)
    _, final = m(state=s0, **x)
    torch.testing.assert_close(final["S"], retnet_gamma()[:, None, None] ** T * s0["S"])


def test_rwkv6_first_output_is_the_bonus_term():
    """From a zero state the first output is scale · Σ_i r_i u_i k_i v_j: the current
    token enters the output only through u, the state only through the next step."""
    m = load("rwkv6", H=H, K=K, V=V)
    x = random_inputs(m, B, 1)
    y, _ = m(**x)
    r, k, v = x["r"][:, 0], x["k"][:, 0], x["v"][:, 0]
    want = SCALE * (r * m.u * k).sum(-1, keepdim=True) * v
    torch.testing.assert_close(y[:, 0], want.detach())


def test_mlstm_normalizer_both_sides_of_the_max():
    """With a larger input gate |scale · qᵀ n| goes above 1 at some steps and stays
    below at others; both branches of max(·, 1) agree with the reference."""
    m = load("mlstm", H=H, K=K, V=V)
    x = random_inputs(m, B, 13, i=lambda i: i / 2 + 0.5)
    n = torch.zeros(B, H, K, dtype=torch.float64)
    above = []
    for t in range(13):
        n = torch.sigmoid(x["f"][:, t])[..., None] * n + torch.exp(x["i"][:, t])[..., None] \
            * x["k"][:, t]
        above.append(mlstm_denominator(x["q"][:, t], n) > 1)
    above = torch.stack(above)
    assert above.any() and not above.all()
    assert_matches_reference(m, mlstm_reference, x, random_state(m, B))
