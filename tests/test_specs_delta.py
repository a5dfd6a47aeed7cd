"""Delta-rule cells and the unusual ones (Titans, Aaren, an LSRL program) against hand
loops written from their papers' equations (float64; outputs, states, gradients)."""

import pytest
import torch
from helpers import (LENGTHS, assert_matches_reference, assert_step_matches_forward, load,
                     random_inputs, random_state)

F = torch.nn.functional
H, K, V, B = 2, 4, 3, 2


def outer(k, v):
    return k.unsqueeze(-1) * v.unsqueeze(-2)


def householder_step(S, k, v, beta):
    """(I − β k kᵀ) S + β k vᵀ, written as the delta rule S + β k (v − Sᵀk)ᵀ."""
    prediction = torch.einsum("bhk,bhkv->bhv", k, S)
    return S + beta[..., None, None] * outer(k, v - prediction)


def attention_loop(update, read="q", scale=K ** -0.5):
    def reference(x, params, state):
        S, outs = state["S"], []
        for t in range(x[read].shape[1]):
            S = update(S, {n: val[:, t] for n, val in x.items()})
            outs.append(torch.einsum("bhk,bhkv->bhv", x[read][:, t] * scale, S))
        return {"o": torch.stack(outs, 1)}, {"S": S}
    return reference


def gated_delta(S, x):
    decayed = torch.exp(x["g"])[..., None, None] * S
    return householder_step(decayed, x["k"], x["v"], x["beta"])


def delta_product(S, x):
    for r in range(2):
        S = householder_step(S, x["k"][:, :, r], x["v"][:, :, r], x["beta"][:, :, r])
    return S


def rwkv7(S, x):
    # paper (value × key): S ← S (diag(w) + aᵀb) + vᵀk; ours is its transpose
    P = S.transpose(-1, -2)
    P = P @ (torch.diag_embed(torch.exp(x["w"])) + outer(x["a"], x["b"])) + outer(x["v"], x["k"])
    return P.transpose(-1, -2)


def titans_reference(x, params, state):
    M, P, outs = state["M"], state["P"], []
    for t in range(x["q"].shape[1]):
        k, v = x["k"][:, t], x["v"][:, t]
        grad = outer(k, torch.einsum("bhk,bhkv->bhv", k, M) - v)   # ∇ of ½‖Mᵀk − v‖²
        P = x["eta"][:, t, :, None, None] * P - x["theta"][:, t, :, None, None] * grad
        M = (1 - x["alpha"][:, t, :, None, None]) * M + P
        outs.append(torch.einsum("bhk,bhkv->bhv", x["q"][:, t] * K ** -0.5, M))
    return {"o": torch.stack(outs, 1)}, {"M": M, "P": P}


def aaren_reference(x, params, state):
    m, a, c, outs = state["m"], state["a"], state["c"], []
    for t in range(x["k"].shape[1]):
        s = (params["q"] * x["k"][:, t]).sum(-1)
        m_new = torch.maximum(m, s)
        a = a * torch.exp(m - m_new)[..., None] + x["v"][:, t] * torch.exp(s - m_new)[..., None]
        c = c * torch.exp(m - m_new) + torch.exp(s - m_new)
        m = m_new
        outs.append(a / c[..., None])
    return {"o": torch.stack(outs, 1)}, {"m": m, "a": a, "c": c}


def parity_reference(x, params, state):
    c, outs = state["c"], []
    for t in range(x["x"].shape[1]):
        c = c + x["x"][:, t]
        outs.append((1 - torch.cos(torch.pi * c)) / 2)
    return {"parity": torch.stack(outs, 1)}, {"c": c}


unit = torch.sigmoid
CELLS = {
    "delta_net": (attention_loop(lambda S, x: householder_step(S, x["k"], x["v"], x["beta"])),
                  {"beta": unit, "k": F.normalize}, {}),
    "gated_delta_net": (attention_loop(gated_delta), {"beta": unit, "g": F.logsigmoid}, {}),
    "delta_product": (attention_loop(delta_product),
                      {"beta": lambda b: 2 * torch.sigmoid(b)}, {}),
    "rwkv7": (attention_loop(rwkv7, read="r", scale=1.0),
              {"w": lambda w: -torch.exp(w / 2), "a": lambda a: a / 4}, {}),
    "titans": (titans_reference, {"eta": unit, "theta": unit, "alpha": unit}, {}),
    "aaren": (aaren_reference, {}, {"c": lambda c: c.abs() + 0.5}),
}


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("with_state", [False, True])
def test_against_reference(name, T, with_state):
    reference, transforms, state_transforms = CELLS[name]
    m = load(name, H=H, K=K, V=V)
    x = random_inputs(m, B, T, **transforms)
    s = random_state(m, B, **state_transforms) if with_state else None
    assert_matches_reference(m, reference, x, s)
    assert_step_matches_forward(m, x, s)


def test_aaren_is_softmax_attention_over_the_prefix():
    """An independent formulation: softmax over all scores so far, at every step."""
    m = load("aaren", H=H, K=K, V=V)
    x = random_inputs(m, B, 9)
    o, _ = m(**x)
    scores = torch.einsum("hk,bthk->bth", m.q.detach(), x["k"])
    for t in range(9):
        weights = torch.softmax(scores[:, : t + 1], dim=1)
        expected = torch.einsum("bsh,bshv->bhv", weights, x["v"][:, : t + 1])
        torch.testing.assert_close(o[:, t], expected)


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True])
def test_lsrl_parity(T, with_state):
    m = load("lsrl_parity")
    bits = torch.randint(0, 2, (3, T, 1), generator=torch.Generator().manual_seed(T))
    x = {"x": bits.double()}
    s = {"c": torch.randint(0, 5, (3, 1)).double()} if with_state else None
    assert_matches_reference(m, parity_reference, x, s)
    assert_step_matches_forward(m, x, s)
    y, _ = m(state=s, **x)
    start = 0 if s is None else s["c"].long()[:, None]
    expected = (bits.cumsum(1) + start) % 2
    assert torch.equal(y.round().long(), expected)
