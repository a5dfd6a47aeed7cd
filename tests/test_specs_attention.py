"""Linear-attention cells with a matrix state against hand loops written from their
papers' equations (float64; outputs, final states and gradients)."""

import pytest
import torch
from helpers import (LENGTHS, assert_matches_reference, assert_step_matches_forward, load,
                     random_inputs, random_state)

F = torch.nn.functional
H, K, V, B = 2, 4, 3, 2


def outer(k, v):
    return k.unsqueeze(-1) * v.unsqueeze(-2)


def read(q, S):
    return torch.einsum("bhk,bhkv->bhv", q * K ** -0.5, S)


def decayed_attention(decay):
    """S_t = decay_t ⊙ S_{t-1} + k_t v_tᵀ, o_t = scale q_tᵀ S_t; decay(inputs, t) is
    broadcast against S [B, H, K, V]."""
    def reference(x, params, state):
        S, outs = state["S"], []
        for t in range(x["q"].shape[1]):
            S = decay(x, params, t) * S + outer(x["k"][:, t], x["v"][:, t])
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


def mlstm_reference(x, params, state):
    S, n, outs = state["S"], state["n"], []
    for t in range(x["q"].shape[1]):
        f = torch.sigmoid(x["f"][:, t])[..., None]
        i = torch.exp(x["i"][:, t])[..., None]
        S = f[..., None] * S + i[..., None] * outer(x["k"][:, t], x["v"][:, t])
        n = f * n + i * x["k"][:, t]
        q = x["q"][:, t] * K ** -0.5
        num = torch.einsum("bhk,bhkv->bhv", q, S)
        den = torch.clamp((q * n).sum(-1).abs(), min=1.0)
        outs.append(num / den[..., None])
    return {"o": torch.stack(outs, 1)}, {"S": S, "n": n}


CELLS = {
    "linear_attn": (decayed_attention(lambda x, p, t: 1.0), {}),
    "simple_gla": (decayed_attention(lambda x, p, t: torch.exp(x["g"][:, t])[..., None, None]),
                   {"g": F.logsigmoid}),
    "retnet": (decayed_attention(lambda x, p, t: (1 - 2.0 ** (-5 - torch.arange(
        H, dtype=torch.float64)))[:, None, None]), {}),
    "gla": (decayed_attention(lambda x, p, t: torch.exp(x["g"][:, t])[..., None]),
            {"g": lambda g: F.logsigmoid(g) / 4}),
    "rwkv6": (rwkv6_reference, {"w": lambda w: -torch.exp(w / 2)}),
    "mlstm": (mlstm_reference, {"i": lambda i: -F.softplus(i)}),
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


def test_mlstm_normalizer_bounds_the_output():
    """With large normalizers the output is num / |q·n| (the max(·, 1) is inactive)."""
    m = load("mlstm", H=H, K=K, V=V)
    x = random_inputs(m, B, 5, i=lambda i: 2 + 0 * i)
    y, state = m(**x)
    assert torch.isfinite(y).all() and state["n"].abs().max() > 1
