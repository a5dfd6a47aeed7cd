"""Delta-rule cells (DeltaNet, Gated DeltaNet, DeltaProduct, RWKV-7) and the unusual ones
(Titans' linear memory, Aaren, an LSRL parity program) against references written from
their papers' equations (float64; outputs, final states and gradients).

The references take a different route from the specs where the papers offer one: the
delta rules as explicit K × K transition matrices (generalized Householder products),
RWKV-7 in the paper's value × key orientation, Titans' gradient step by autograd, Aaren
as softmax attention over the whole prefix at once."""

import math

import pytest
import torch
from helpers import (LENGTHS, SPECS, assert_matches_reference, assert_step_matches_forward,
                     load, outer, random_inputs, random_state)

import reclang

F = torch.nn.functional
H, K, V, B = 2, 4, 3, 2
SCALE = K ** -0.5




def read(q, S, scale=SCALE):
    """scale · qᵀ S per head: [B, H, K] x [B, H, K, V] -> [B, H, V]."""
    return torch.einsum("bhk,bhkv->bhv", q * scale, S)


def householder(k, beta):
    """The generalized Householder matrix I − β k kᵀ per head: [B, H, K, K]."""
    return torch.eye(k.shape[-1], dtype=k.dtype) - beta[..., None, None] * outer(k, k)


def unit(x):
    """L2-normalized along the last axis (the head's key axis)."""
    return F.normalize(x, dim=-1)


# ---- matrix-state cells: S_t = update(S_{t-1}, x_t), o_t = scale · r_tᵀ S_t

def matrix_state_loop(update, reader="q", scale=SCALE):
    def reference(x, params, state):
        S, outs = state["S"], []
        for t in range(x[reader].shape[1]):
            x_t = {name: val[:, t] for name, val in x.items()}
            S = update(S, x_t)
            outs.append(read(x_t[reader], S, scale))
        return {"o": torch.stack(outs, 1)}, {"S": S}
    return reference


def delta_net(S, x):
    """(I − β k kᵀ) S + β k vᵀ."""
    beta = x["beta"][..., None, None]
    return householder(x["k"], x["beta"]) @ S + beta * outer(x["k"], x["v"])


def gated_delta_net(S, x):
    """α (I − β k kᵀ) S + β k vᵀ, α = exp(g)."""
    alpha, beta = torch.exp(x["g"])[..., None, None], x["beta"][..., None, None]
    return alpha * householder(x["k"], x["beta"]) @ S + beta * outer(x["k"], x["v"])


def delta_product(S, x):
    """n_h delta steps as one affine map A S + b: the transition is the Householder
    product A = H_n ⋯ H₁, the input b = Σ_r H_n ⋯ H_{r+1} β_r k_r v_rᵀ."""
    k, v, beta = x["k"], x["v"], x["beta"]
    A, b = torch.eye(k.shape[-1], dtype=k.dtype), torch.zeros_like(S)
    for r in range(k.shape[2]):
        Hr = householder(k[:, :, r], beta[:, :, r])
        A, b = Hr @ A, Hr @ b + beta[:, :, r, None, None] * outer(k[:, :, r], v[:, :, r])
    return A @ S + b


def rwkv7(S, x):
    """The paper's orientation (value × key, row vectors): P ← P (diag(w) + aᵀb) + vᵀk,
    with P = Sᵀ."""
    P = S.transpose(-1, -2)
    transition = torch.diag_embed(torch.exp(x["w"])) + outer(x["a"], x["b"])
    P = P @ transition + outer(x["v"], x["k"])
    return P.transpose(-1, -2)


# ---- Titans: gradient descent with momentum on ½‖Mᵀk − v‖², the gradient by autograd

def memory_loss(M, k, v):
    """ℓ(M; k, v) = ½ ‖Mᵀk − v‖², summed over batch and heads (each M gets its own)."""
    return 0.5 * (torch.einsum("bhk,bhkv->bhv", k, M) - v).pow(2).sum()


def titans_reference(x, params, state):
    M, P, outs = state["M"], state["P"], []
    for t in range(x["q"].shape[1]):
        eta, theta, alpha = (x[n][:, t, :, None, None] for n in ("eta", "theta", "alpha"))
        grad = torch.func.grad(memory_loss)(M, x["k"][:, t], x["v"][:, t])
        P = eta * P - theta * grad
        M = (1 - alpha) * M + P
        outs.append(read(x["q"][:, t], M))
    return {"o": torch.stack(outs, 1)}, {"M": M, "P": P}


# ---- Aaren: softmax attention over the prefix, every step at once (no recurrence)

def aaren_reference(x, params, state):
    """o_t = (a₀e^{m₀} + Σ_{u≤t} v_u e^{s_u}) / (c₀e^{m₀} + Σ_{u≤t} e^{s_u}): the initial
    state stands for earlier tokens. Each step is shifted by its own m_t, the largest
    score so far, so the final (m, a, c) is the shifted numerator and denominator."""
    m0, a0, c0 = state["m"], state["a"], state["c"]
    s = torch.einsum("hk,bthk->bth", params["q"], x["k"])                  # [B, T, H]
    m = torch.maximum(s.cummax(1).values, m0[:, None])                      # m_t
    T = s.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None]   # [1, t, u, 1]
    # mask before exp: exp(s_u − m_t) overflows for u > t, and 0 · inf is NaN in backward
    weights = torch.exp(torch.where(causal, s[:, None] - m[:, :, None], float("-inf")))
    prior = torch.exp(m0[:, None] - m)                                      # [B, T, H]
    num = torch.einsum("btuh,buhv->bthv", weights, x["v"]) + prior[..., None] * a0[:, None]
    den = weights.sum(2) + prior * c0[:, None]
    return {"o": num / den[..., None]}, {"m": m[:, -1], "a": num[:, -1], "c": den[:, -1]}


# ---- LSRL parity: a counter read out by a triangle wave of ReLU hats on the odd numbers

def hat(z):
    """1 at 0, 0 at every other integer, linear in between."""
    return F.relu(z + 1) - 2 * F.relu(z) + F.relu(z - 1)


def parity_reference(M):
    odd = 2 * torch.arange(M, dtype=torch.float64) + 1

    def reference(x, params, state):
        c, outs = state["c"], []
        for t in range(x["x"].shape[1]):
            c = c + x["x"][:, t]
            outs.append(hat(c[..., None] - odd).sum(-1))
        return {"parity": torch.stack(outs, 1)}, {"c": c}
    return reference


# name -> (hyperparameters, reference, input transforms, initial-state transforms).
# Gates are constrained as the papers do: β ∈ [0, 1] (DeltaProduct: [0, 2]) by a sigmoid,
# log decays ≤ 0, keys L2-normalized, Titans' η, θ, α ∈ [0, 1] by a sigmoid.
ATTENTION = {"H": H, "K": K, "V": V}
CELLS = {
    "delta_net": (ATTENTION, matrix_state_loop(delta_net),
                  {"q": unit, "k": unit, "beta": torch.sigmoid}, {}),
    "gated_delta_net": (ATTENTION, matrix_state_loop(gated_delta_net),
                        {"q": unit, "k": unit, "beta": torch.sigmoid, "g": F.logsigmoid}, {}),
    "delta_product": (ATTENTION, matrix_state_loop(delta_product),
                      {"k": unit, "beta": lambda b: 2 * torch.sigmoid(b)}, {}),
    # w as in the paper: w_t = exp(−e^-1/2 σ(d_t)); a, b removal and replacement keys
    "rwkv7": (ATTENTION, matrix_state_loop(rwkv7, reader="r", scale=1.0),
              {"w": lambda d: -math.exp(-0.5) * torch.sigmoid(d),
               "k": unit, "a": lambda a: -unit(a), "b": lambda b: unit(b) / 2}, {}),
    "titans": (ATTENTION, titans_reference,
               {"k": unit, "eta": torch.sigmoid, "theta": torch.sigmoid,
                "alpha": torch.sigmoid}, {}),
    "aaren": (ATTENTION, aaren_reference, {}, {"c": lambda c: c.abs() + 0.5}),
    # real-valued (not 0/1) inputs: the counts miss the kinks at the integers, so the
    # gradients are defined; test_lsrl_parity_is_exact takes the 0/1 streams
    "lsrl_parity": ({"D": 3, "M": 4}, parity_reference(4), {"x": lambda x: 2 * x}, {}),
}


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("with_state", [False, True])
def test_against_reference(name, T, with_state):
    hypers, reference, transforms, state_transforms = CELLS[name]
    m = load(name, **hypers)
    x = random_inputs(m, B, T, **transforms)
    s = random_state(m, B, **state_transforms) if with_state else None
    assert_matches_reference(m, reference, x, s)
    assert_step_matches_forward(m, x, s)


@pytest.mark.parametrize("NH", [1, 3])
def test_delta_product_with_any_number_of_householder_steps(NH):
    """One spec for every n_h (a `for` block): n_h = 1, 3 against the reference, whole
    sequences, state passed, step by step; the analysis reports dplr with rank n_h."""
    assert reclang.load(SPECS / "delta_product.rec", NH=NH).plan.summary == \
        f"dplr, rank {NH} (diagonal part: no decay)"
    m = load("delta_product", **ATTENTION, NH=NH)
    x = random_inputs(m, B, 5, k=unit, beta=lambda b: 2 * torch.sigmoid(b))
    s = random_state(m, B)
    assert_matches_reference(m, matrix_state_loop(delta_product), x, s)
    assert_step_matches_forward(m, x, s)


# ---- every cell of the family contains DeltaNet as a special case

def zeros_like_gate(x):
    return torch.zeros_like(x["beta"])


# name -> (DeltaNet's inputs -> this cell's inputs, the name of its matrix state)
AS_DELTA_NET = {
    "gated_delta_net": (lambda x: {**x, "g": zeros_like_gate(x)}, "S"),     # no decay
    "delta_product": (lambda x: {                                            # β₂ = 0
        "q": x["q"], "k": torch.stack([x["k"], unit(torch.randn_like(x["k"]))], 3),
        "v": torch.stack([x["v"], torch.randn_like(x["v"])], 3),
        "beta": torch.stack([x["beta"], zeros_like_gate(x)], 3)}, "S"),
    "rwkv7": (lambda x: {                                # w = 1, a = −k, b = βk, k → βk
        "r": x["q"] * SCALE, "w": torch.zeros_like(x["k"]), "v": x["v"],
        "k": x["beta"][..., None] * x["k"], "a": -x["k"], "b": x["beta"][..., None] * x["k"]},
        "S"),
    "titans": (lambda x: {                               # no momentum, no forgetting, θ = β
        "q": x["q"], "k": x["k"], "v": x["v"], "eta": zeros_like_gate(x),
        "theta": x["beta"], "alpha": zeros_like_gate(x)}, "M"),
}


@pytest.mark.parametrize("name", AS_DELTA_NET)
def test_reduces_to_delta_net(name):
    """Gated DeltaNet without decay, DeltaProduct with a void second step, RWKV-7 with
    w = 1 and a = −k, b = βk, and Titans without momentum or forgetting (one gradient
    step on ½‖Mᵀk − v‖² is the delta rule) are DeltaNet."""
    delta = load("delta_net", **ATTENTION)
    x = random_inputs(delta, B, 7, k=unit, beta=torch.sigmoid)
    s = random_state(delta, B)
    want, want_state = delta(state=s, **x)
    adapt, state_name = AS_DELTA_NET[name]
    cell = load(name, **ATTENTION)
    initial = {n: torch.zeros_like(s["S"]) for n in cell.initial_state(B, torch.float64)}
    got, got_state = cell(state={**initial, state_name: s["S"]}, **adapt(x))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_state[state_name], want_state["S"])


def test_aaren_is_stable_for_large_scores():
    """In float32, scores in the thousands: the running max keeps every exp ≤ 1, where
    exp(score) itself would overflow."""
    m = load("aaren", **ATTENTION).float()
    x = {n: v.float() for n, v in random_inputs(m, B, 13).items()}
    x["k"] = x["k"] * 3000
    o, _ = m(**x)
    scores = torch.einsum("hk,bthk->bth", m.q.detach(), x["k"])
    assert scores.abs().max() > 100                      # exp(scores) overflows float32
    for t in range(13):
        weights = torch.softmax(scores[:, : t + 1], dim=1)
        expected = torch.einsum("buh,buhv->bhv", weights, x["v"][:, : t + 1])
        torch.testing.assert_close(o[:, t], expected)


@pytest.mark.parametrize("T", (1, 13, 127))
def test_lsrl_parity_is_exact(T):
    """On 0/1 streams the float32 program gives exactly the running parity, with no
    rounding, for every count up to 2M = 128, from a zero or a 0/1 initial count."""
    m = load("lsrl_parity", D=4).float()
    gen = torch.Generator().manual_seed(T)
    bits = torch.randint(0, 2, (3, T, 4), generator=gen)
    bits[0] = 1                                         # one stream of ones only: count T
    for start in (None, torch.randint(0, 2, (3, 4), generator=gen)):
        s = None if start is None else {"c": start.float()}
        y, final = m(state=s, **{"x": bits.float()})
        count = bits.cumsum(1) + (0 if start is None else start[:, None])
        assert torch.equal(y, (count % 2).float())
        assert torch.equal(final["c"], count[:, -1].float())
