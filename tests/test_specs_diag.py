"""Diagonal (elementwise) recurrences — minGRU, minLSTM, LRU, S4D, LMU, HGRN, HGRN2,
RG-LRU, Mamba's S6 and Mamba-2's SSD — against references written from their papers'
equations (float64; outputs, final states and gradients).

Every cell has a step-by-step loop reference. Where a paper computes its cell another
way, that route is checked too: the unrolled sum that the parallel scans compute
(minGRU, minLSTM, HGRN, RG-LRU, S6), the convolution kernels of the time-invariant cells
(S4D, LRU), the quadratic "attention" form of SSD and HGRN2. The initializations the
papers prescribe are checked last."""

import math

import pytest
import torch
from helpers import (LENGTHS, assert_matches_reference, assert_step_matches_forward, load,
                     random_inputs, random_state)

F = torch.nn.functional
B = 2
HYPERS = {
    "min_gru": {"D": 3, "N": 4},
    "min_lstm": {"D": 3, "N": 4},
    "lru": {"D": 3, "N": 4},
    "s4d": {"D": 3, "N": 4},
    "lmu": {"D": 2, "N": 3, "M": 4, "theta": 5.0},
    "hgrn": {"D": 5},
    "hgrn2": {"H": 2, "K": 4, "V": 3},
    "rg_lru": {"D": 4},
    "mamba_s6": {"D": 4, "N": 3, "R": 2},
    "mamba2": {"H": 2, "P": 3, "N": 4},
}
LOG_GATE = {"g": F.logsigmoid}  # a log forget gate is ≤ 0
# S4D's steps are tiny at init (Δ ≥ 0.001); larger ones make the test see the dynamics
S4D_STEPS = {"log_dt": lambda p: torch.log(torch.tensor([0.1, 0.5, 1.0], dtype=p.dtype))}


def cell(name, **overrides):
    """The float64 module of `name` at its test size; `overrides` sets params by name
    (a function of the initial value), where the initial values are too tame."""
    m = load(name, **HYPERS[name])
    with torch.no_grad():
        for param, fn in overrides.items():
            getattr(m, param).copy_(fn(getattr(m, param)))
    return m


def loop(step, readout):
    """A reference that runs `step(x_t, params, state) -> new state` over time and reads
    `readout(x_t, params, new state) -> outputs` after each step."""
    def reference(x, params, state):
        state, outs = dict(state), []
        for t in range(next(iter(x.values())).shape[1]):
            x_t = {k: v[:, t] for k, v in x.items()}
            state = step(x_t, params, state)
            outs.append(readout(x_t, params, state))
        return {k: torch.stack([o[k] for o in outs], 1) for k in outs[0]}, state
    return reference


def linear(W, x, b=0):
    """torch.nn.Linear's convention: W is [out, in]."""
    return x @ W.T + b


def complex_(re, im):
    return torch.complex(re, im)


# ---- the cells, one step each, from the papers' equations

def min_gru(x, p, s):
    """h = (1 − z) h + z h̃, z = σ(W_z x + b_z), h̃ = W_h x + b_h."""
    z = torch.sigmoid(linear(p["Wz"], x["x"], p["bz"]))
    return {"h": (1 - z) * s["h"] + z * linear(p["Wh"], x["x"], p["bh"])}


def min_lstm(x, p, s):
    """h = f' h + i' h̃ with f' = f / (f + i), i' = i / (f + i)."""
    f = torch.sigmoid(linear(p["Wf"], x["x"], p["bf"]))
    i = torch.sigmoid(linear(p["Wi"], x["x"], p["bi"]))
    candidate = linear(p["Wh"], x["x"], p["bh"])
    return {"h": f / (f + i) * s["h"] + i / (f + i) * candidate}


def lru_lambda(p):
    """λ = exp(−ν + iθ), ν = exp(ν_log), θ = exp(θ_log), as modulus and phase."""
    return torch.polar(torch.exp(-torch.exp(p["nu_log"])), torch.exp(p["theta_log"]))


def lru_input(x, p):
    """γ ⊙ (B x), γ = sqrt(1 − |λ|²): [B, (T,) N], complex."""
    gamma = torch.sqrt(1 - lru_lambda(p).abs() ** 2)
    return gamma * (x.to(torch.complex128) @ complex_(p["B_re"], p["B_im"]).T)


def lru(x, p, s):
    return {"h": lru_lambda(p) * s["h"] + lru_input(x["x"], p)}


def lru_out(x, p, s):
    """y = Re(C h) + D ⊙ x."""
    return {"y": (s["h"] @ complex_(p["C_re"], p["C_im"]).T).real + p["Dskip"] * x["x"]}


def s4d_discretized(p):
    """ZOH: Ā = exp(ΔA), B̄ = (exp(ΔA) − 1)/A · B, per channel: [D, N] each."""
    A = complex_(-torch.exp(p["A_re_log"]), p["A_im"])
    dtA = torch.exp(p["log_dt"])[:, None] * A
    return torch.exp(dtA), torch.expm1(dtA) / A * complex_(p["B_re"], p["B_im"])


def s4d(x, p, s):
    Abar, Bbar = s4d_discretized(p)
    return {"h": Abar * s["h"] + Bbar * x["x"][..., None]}


def s4d_out(x, p, s):
    """y = 2 Re(Σ_n C h) + D x: the conjugate of each state adds the conjugate term."""
    C = complex_(p["C_re"], p["C_im"])
    return {"y": 2 * (C * s["h"]).sum(-1).real + p["Dskip"] * x["x"]}


# The Legendre matrices of order 4, written out from A_ij = (2i+1)(−1 if i < j else
# (−1)^(i−j+1)) and B_i = (2i+1)(−1)^i: the spec computes them from their formula.
LEGENDRE_A = torch.tensor([[-1., -1., -1., -1.],
                           [3., -3., -3., -3.],
                           [-5., 5., -5., -5.],
                           [7., -7., 7., -7.]], dtype=torch.float64)
LEGENDRE_B = torch.tensor([1., -3., 5., -7.], dtype=torch.float64)


def lmu(x, p, s, theta=HYPERS["lmu"]["theta"]):
    """u = e_x·x + e_h·h + e_m·m;  m ← m + (A m + B u)/θ;  h = tanh(W_x x + W_h h + W_m m)."""
    u = x["x"] @ p["ex"] + s["h"] @ p["eh"] + s["m"] @ p["em"]
    m = s["m"] + (s["m"] @ LEGENDRE_A.T + LEGENDRE_B * u[:, None]) / theta
    h = torch.tanh(linear(p["Wx"], x["x"]) + linear(p["Wh"], s["h"]) + linear(p["Wm"], m))
    return {"h": h, "m": m}


def hgrn(x, p, s):
    """h = f ⊙ h + x, f = exp(g)."""
    return {"h": torch.exp(x["g"]) * s["h"] + x["x"]}


def hgrn2(x, p, s):
    """S = diag(f) S + (1 − f) vᵀ per head."""
    f = torch.exp(x["g"])[..., None]
    return {"S": f * s["S"] + (1 - f) * x["v"][..., None, :]}


def hgrn2_out(x, p, s, K=HYPERS["hgrn2"]["K"]):
    return {"o": torch.einsum("bhk,bhkv->bhv", x["q"], s["S"]) * K ** -0.5}


def rg_lru(x, p, s, c=8.0):
    """a_t = a^(c r_t) with a = σ(−Λ) (the spec's sign of Λ), taken as a power here, not in
    log space as the spec does; h = a_t h + sqrt(1 − a_t²)(i ⊙ x)."""
    r = torch.sigmoid(linear(p["Wa"], x["x"], p["ba"]))
    i = torch.sigmoid(linear(p["Wx"], x["x"], p["bx"]))
    a = torch.sigmoid(-p["Lambda"]) ** (c * r)
    return {"h": a * s["h"] + torch.sqrt(1 - a ** 2) * (i * x["x"])}


def mamba_s6_discretized(x, p):
    """Ā = exp(ΔA) and B̄x = Δ B x for one step or a sequence: [..., D, N] each."""
    dt = F.softplus(linear(p["Wdt"], linear(p["Wr"], x), p["bdt"]))     # [..., D]
    A = -torch.exp(p["A_log"])                                           # [D, N]
    Bt = linear(p["Wb"], x)                                              # [..., N]
    return torch.exp(dt[..., None] * A), (dt * x)[..., None] * Bt[..., None, :]


def mamba_s6(x, p, s):
    Abar, Bx = mamba_s6_discretized(x["x"], p)
    return {"s": Abar * s["s"] + Bx}


def mamba_s6_out(x, p, s):
    """y = Σ_n C_n s[:, n] + D x with C = W_C x."""
    C = linear(p["Wc"], x["x"])
    return {"y": torch.einsum("...n,...dn->...d", C, s["s"]) + p["Dskip"] * x["x"]}


def mamba2(x, p, s):
    """S = exp(−Δ exp(A_log)) S + Δ x Bᵀ per head, Δ = softplus(dt + dt_bias)."""
    delta = F.softplus(x["dt"] + p["dt_bias"])                                  # [B, H]
    decay = torch.exp(-delta * torch.exp(p["A_log"]))[..., None, None]
    write = (delta[..., None] * x["x"])[..., None] * x["B"][:, None, None, :]
    return {"S": decay * s["S"] + write}


def mamba2_out(x, p, s):
    """y = S C + D x."""
    return {"y": torch.einsum("bn,bhpn->bhp", x["C"], s["S"]) + p["Dskip"][:, None] * x["x"]}


CELLS = {  # name: (loop reference, input transforms)
    "min_gru": (loop(min_gru, lambda x, p, s: {"y": s["h"]}), {}),
    "min_lstm": (loop(min_lstm, lambda x, p, s: {"y": s["h"]}), {}),
    "lru": (loop(lru, lru_out), {}),
    "s4d": (loop(s4d, s4d_out), {}),
    "lmu": (loop(lmu, lambda x, p, s: {"y": s["h"]}), {}),
    "hgrn": (loop(hgrn, lambda x, p, s: {"o": s["h"]}), LOG_GATE),
    "hgrn2": (loop(hgrn2, hgrn2_out), LOG_GATE),
    "rg_lru": (loop(rg_lru, lambda x, p, s: {"y": s["h"]}), {}),
    "mamba_s6": (loop(mamba_s6, mamba_s6_out), {}),
    "mamba2": (loop(mamba2, mamba2_out), {}),
}


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("with_state", [False, True])
def test_against_reference(name, T, with_state):
    reference, transforms = CELLS[name]
    m = cell(name, **(S4D_STEPS if name == "s4d" else {}))
    x = random_inputs(m, B, T, **transforms)
    s = random_state(m, B) if with_state else None
    assert_matches_reference(m, reference, x, s)
    assert_step_matches_forward(m, x, s)


# ---- the parallel routes the papers compute with

def causal_exp(gap):
    """exp(gap[:, t, s]) where s ≤ t, else 0; gap is [B, T, T, ...]."""
    T = gap.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril().view(1, T, T, *[1] * (gap.dim() - 3))
    return torch.where(causal, gap, -math.inf).exp()


def unrolled(log_a, b, h0):
    """The diagonal recurrence h_t = a_t h_{t-1} + b_t summed out, as parallel scans do:
    h_t = (Π_{r≤t} a_r) h_0 + Σ_{s≤t} (Π_{s<r≤t} a_r) b_s with the products as exp of
    differences of cumulative log gates. log_a, b [B, T, ...], h0 [B, ...] -> [B, T, ...]."""
    L = log_a.cumsum(1)
    return (causal_exp(L[:, :, None] - L[:, None]) * b[:, None]).sum(2) + L.exp() * h0[:, None]


# log a_t and b_t of h_t = a_t h_{t-1} + b_t, from each paper's equations

def min_gru_terms(x, p):
    pre = linear(p["Wz"], x["x"], p["bz"])                  # a = 1 − z = σ(−pre)
    return F.logsigmoid(-pre), torch.sigmoid(pre) * linear(p["Wh"], x["x"], p["bh"])


def min_lstm_terms(x, p):
    f = torch.sigmoid(linear(p["Wf"], x["x"], p["bf"]))
    i = torch.sigmoid(linear(p["Wi"], x["x"], p["bi"]))
    return torch.log(f / (f + i)), i / (f + i) * linear(p["Wh"], x["x"], p["bh"])


def rg_lru_terms(x, p, c=8.0):
    r = torch.sigmoid(linear(p["Wa"], x["x"], p["ba"]))
    i = torch.sigmoid(linear(p["Wx"], x["x"], p["bx"]))
    log_a = c * r * F.logsigmoid(-p["Lambda"])
    return log_a, torch.sqrt(-torch.expm1(2 * log_a)) * i * x["x"]


def mamba_s6_terms(x, p):
    Abar, Bx = mamba_s6_discretized(x["x"], p)
    return torch.log(Abar), Bx


def same(x, p, h):
    return h


DIAG_SCANS = {  # name: (state, output, terms(x, p), readout(x, p, all states h_t))
    "min_gru": ("h", "y", min_gru_terms, same),
    "min_lstm": ("h", "y", min_lstm_terms, same),
    "hgrn": ("h", "o", lambda x, p: (x["g"], x["x"]), same),
    "rg_lru": ("h", "y", rg_lru_terms, same),
    "mamba_s6": ("s", "y", mamba_s6_terms, lambda x, p, s: mamba_s6_out(x, p, {"s": s})["y"]),
}


@pytest.mark.parametrize("T", [1, 13])
@pytest.mark.parametrize("name", DIAG_SCANS)
def test_diagonal_cells_equal_their_unrolled_sum(name, T):
    """The papers train these cells with a parallel scan over h_t = a_t h_{t-1} + b_t
    (minGRU's and minLSTM's Appendix, HGRN's and Griffin's linear scan, Mamba's selective
    scan); its closed form is the reference here."""
    state, out, terms, readout = DIAG_SCANS[name]

    def reference(x, p, s):
        log_a, b = terms(x, p)
        h = unrolled(log_a, b, s[state])
        return {out: readout(x, p, h)}, {state: h[:, -1]}

    m = cell(name)
    x = random_inputs(m, B, T, **CELLS[name][1])
    assert_matches_reference(m, reference, x, random_state(m, B))


def lru_convolution(x, p, s):
    """The LRU unrolled (the paper's eq. for x_k as a sum over its inputs): h_t =
    λ^(t+1) h_0 + Σ_{s≤t} λ^(t−s) γ B x_s, the powers of λ as a Vandermonde matrix."""
    lam, u = lru_lambda(p), lru_input(x["x"], p)                      # [N], [B, T, N]
    T = u.shape[1]
    lag = torch.arange(T)[:, None] - torch.arange(T)[None]            # t − s
    powers = torch.where((lag >= 0)[..., None], lam ** lag.clamp(min=0)[..., None], 0)
    steps = torch.arange(1, T + 1)[:, None]
    h = torch.einsum("tsn,bsn->btn", powers, u) + lam ** steps * s["h"][:, None]
    return lru_out(x, p, {"h": h}), {"h": h[:, -1]}


def s4d_convolution(x, p, s):
    """S4D as the paper computes it: the kernel K_j = 2 Re(Σ_n C_n B̄_n Ā_n^j) by a
    Vandermonde product, y = K * x + D x (a causal convolution); the initial state adds
    2 Re(Σ_n C_n Ā_n^(t+1) h_0)."""
    Abar, Bbar = s4d_discretized(p)                                    # [D, N]
    C = complex_(p["C_re"], p["C_im"])
    T = x["x"].shape[1]
    powers = Abar ** torch.arange(T + 1)[:, None, None]                # Ā^j: [T+1, D, N]
    K = 2 * (C * Bbar * powers[:T]).sum(-1).real                       # [T, D]
    lag = torch.arange(T)[:, None] - torch.arange(T)[None]
    Kts = torch.where((lag >= 0)[..., None], K[lag.clamp(min=0)], 0)   # K_{t−s}: [T, T, D]
    y = torch.einsum("tsd,bsd->btd", Kts, x["x"]) + p["Dskip"] * x["x"]
    y = y + 2 * torch.einsum("dn,tdn,bdn->btd", C, powers[1:], s["h"]).real
    final = powers[T] * s["h"] + torch.einsum("sdn,bsd->bdn", powers[:T].flip(0) * Bbar,
                                              x["x"].to(Bbar.dtype))
    return {"y": y}, {"h": final}


@pytest.mark.parametrize("T", [1, 2, 13])
@pytest.mark.parametrize("name, reference", [("lru", lru_convolution),
                                             ("s4d", s4d_convolution)])
def test_time_invariant_cells_equal_their_convolution(name, reference, T):
    m = cell(name, **(S4D_STEPS if name == "s4d" else {}))
    x = random_inputs(m, B, T)
    assert_matches_reference(m, reference, x, random_state(m, B))


def decayed_attention(q, k, v, log_decay, S0, scale=1.0):
    """o_t = scale Σ_i q_t,i (Σ_{s≤t} Π_{s<r≤t} α_r,i k_s,i v_s + Π_{r≤t} α_r,i S_0,i),
    the quadratic (masked attention) form of a linear recurrence with key-wise decay α.
    q, k, log_decay [B, T, H, K]; v [B, T, H, V]; S0 [B, H, K, V]."""
    L = log_decay.expand(*q.shape).cumsum(1)
    decay = causal_exp(L[:, :, None] - L[:, None])                      # [B, t, s, H, K]
    scores = torch.einsum("bthi,bshi,btshi->bhts", q, k, decay)
    o = torch.einsum("bhts,bshj->bthj", scores, v)
    o = o + torch.einsum("bthi,bhij->bthj", q * L.exp(), S0)
    last = (L[:, -1:] - L).exp()                                        # Π_{s<r≤T} α_r
    final = L[:, -1, ..., None].exp() * S0 + torch.einsum("bshi,bshj->bhij", last * k, v)
    return scale * o, final


def hgrn2_attention(x, p, s):
    """HGRN2 with k = 1 − f: o_t = scale Σ_{s≤t} (q_t ⊙ Π α)·(1 − f_s) v_s."""
    o, S = decayed_attention(x["q"], -torch.expm1(x["g"]), x["v"], x["g"], s["S"],
                             HYPERS["hgrn2"]["K"] ** -0.5)
    return {"o": o}, {"S": S}


def mamba2_ssd(x, p, s):
    """SSD's dual form: y = (L ∘ C Bᵀ)(Δ x) + D x with the 1-semiseparable mask
    L_ts = Π_{s<r≤t} a_r, one scalar decay per head; S is [P, N], so S = Sᵀ of the
    attention form's key × value state."""
    delta = F.softplus(x["dt"] + p["dt_bias"])                          # [B, T, H]
    log_a = (-delta * torch.exp(p["A_log"]))[..., None]                 # [B, T, H, 1]
    C, B_ = (x[name][:, :, None].expand(-1, -1, delta.shape[2], -1) for name in "CB")
    o, S = decayed_attention(C, B_, delta[..., None] * x["x"], log_a,
                             s["S"].transpose(-1, -2))
    return {"y": o + p["Dskip"][:, None] * x["x"]}, {"S": S.transpose(-1, -2)}


@pytest.mark.parametrize("T", [1, 13])
@pytest.mark.parametrize("name, reference", [("hgrn2", hgrn2_attention),
                                             ("mamba2", mamba2_ssd)])
def test_matrix_state_cells_equal_their_attention_form(name, reference, T):
    m = cell(name)
    x = random_inputs(m, B, T, **CELLS[name][1])
    assert_matches_reference(m, reference, x, random_state(m, B))


# ---- the initializations of the papers

def test_lru_initialization_is_uniform_on_the_ring():
    """|λ| on r_min ≤ |λ| ≤ r_max with |λ|² uniform (not |λ|), phase in [0, max_phase]."""
    m = load("lru", D=2, N=4000)
    radius = torch.exp(-torch.exp(m.nu_log.detach()))
    phase = torch.exp(m.theta_log.detach())
    assert 0.4 - 1e-6 <= radius.min() and radius.max() <= 0.99 + 1e-6
    assert abs((radius ** 2).mean() - (0.4 ** 2 + 0.99 ** 2) / 2) < 0.015
    assert 0 <= phase.min() and phase.max() <= 6.283 and abs(phase.mean() - 3.14) < 0.1


def test_s4d_lin_initialization():
    """A = −1/2 + iπn in every channel; Δ log-uniform in [dt_min, dt_max]."""
    m = load("s4d", D=2000, N=4)
    A = complex_(-torch.exp(m.A_re_log.detach()), m.A_im.detach())
    n = torch.arange(4, dtype=torch.float64).expand(2000, 4)
    expected = complex_(torch.full_like(n, -0.5), torch.pi * n)
    torch.testing.assert_close(A, expected)
    log_dt = m.log_dt.detach()
    assert math.log(0.001) <= log_dt.min() and log_dt.max() <= math.log(0.1)
    assert abs(log_dt.mean() - (math.log(0.001) + math.log(0.1)) / 2) < 0.1


def test_rg_lru_initial_decay():
    """a^c uniform in [0.9, 0.999], with a = σ(−Λ)."""
    m = load("rg_lru", D=4000)
    a_c = torch.sigmoid(-m.Lambda.detach()) ** 8
    assert 0.9 - 1e-6 <= a_c.min() and a_c.max() <= 0.999 + 1e-6
    assert abs(a_c.mean() - 0.9495) < 0.002


@pytest.mark.parametrize("name, hypers, bias", [("mamba_s6", {"D": 4000, "N": 3}, "bdt"),
                                                ("mamba2", {"H": 4000}, "dt_bias")])
def test_mamba_step_sizes_start_log_uniform(name, hypers, bias):
    """softplus(bias) is Δ₀, log-uniform in [0.001, 0.1]."""
    m = load(name, **hypers)
    log_dt = torch.log(F.softplus(getattr(m, bias).detach()))
    assert math.log(0.001) - 1e-4 <= log_dt.min() and log_dt.max() <= math.log(0.1) + 1e-4
    assert abs(log_dt.mean() - (math.log(0.001) + math.log(0.1)) / 2) < 0.1


def test_mamba_decays_start_as_in_the_papers():
    """S6: A[d, n] = −(n + 1) (S4D-Real); Mamba-2: −A uniform in [1, 16] per head."""
    A = -torch.exp(load("mamba_s6", D=2, N=5).A_log.detach())
    torch.testing.assert_close(A, -torch.arange(1, 6, dtype=torch.float64).expand(2, 5))
    minus_A = torch.exp(load("mamba2", H=4000).A_log.detach())
    assert 1 <= minus_A.min() and minus_A.max() <= 16 and abs(minus_A.mean() - 8.5) < 0.3


def test_lmu_initialization():
    """e_x, e_h LeCun uniform, e_m = 0 (the memory starts unread), W Glorot normal."""
    m = load("lmu", D=400, N=300, M=6)
    assert m.ex.abs().max() <= (3 / 400) ** 0.5 and m.eh.abs().max() <= (3 / 300) ** 0.5
    assert (m.em == 0).all()
    assert abs(m.Wh.std() - (2 / 600) ** 0.5) < 0.002
