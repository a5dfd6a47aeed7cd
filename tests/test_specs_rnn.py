"""Classic RNN cells: LSTM, GRU and Elman against torch.nn (the spec's params fed in
through functional_call, so gradients reach them), sLSTM and the LSTM variants of
"LSTM: A Search Space Odyssey" against hand loops written from the papers' equations."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (LENGTHS, assert_matches_reference, assert_step_matches_forward, load,
                     random_inputs, random_state)
from torch.func import functional_call

D, N, B = 3, 4, 2          # input size, hidden size, batch
NH, DH = 2, 3              # sLSTM heads and head size


# ---- LSTM, GRU, Elman: torch.nn is the reference

def lstm_weights(p):
    # torch adds two biases; the spec has one, so bias_hh is 0
    return {"weight_ih_l0": p["W"].reshape(4 * N, D), "weight_hh_l0": p["U"].reshape(4 * N, N),
            "bias_ih_l0": p["b"].reshape(4 * N),
            "bias_hh_l0": torch.zeros(4 * N, dtype=torch.float64)}


def gru_weights(p):
    # the GRU keeps both biases apart: bias_hh's candidate row sits inside r * (...)
    return {"weight_ih_l0": p["W"].reshape(3 * N, D), "weight_hh_l0": p["U"].reshape(3 * N, N),
            "bias_ih_l0": p["bw"].reshape(3 * N), "bias_hh_l0": p["bu"].reshape(3 * N)}


def elman_weights(p):
    return {"weight_ih_l0": p["W"], "weight_hh_l0": p["U"], "bias_ih_l0": p["b"],
            "bias_hh_l0": torch.zeros(N, dtype=torch.float64)}


TORCH_CELLS = {"lstm": ("LSTM", lstm_weights), "gru": ("GRU", gru_weights),
               "elman": ("RNN", elman_weights)}


def torch_nn_reference(name):
    """torch.nn.{LSTM, GRU, RNN} run with weights built from the spec's params."""
    kind, weights = TORCH_CELLS[name]
    rnn = getattr(torch.nn, kind)(D, N, batch_first=True).double()

    def reference(x, params, state):
        h0 = state["h"].unsqueeze(0)                      # [layers = 1, B, N]
        hidden = (h0, state["c"].unsqueeze(0)) if kind == "LSTM" else h0
        y, final = functional_call(rnn, weights(params), (x["x"], hidden))
        if kind == "LSTM":
            return {"y": y}, {"h": final[0][0], "c": final[1][0]}
        return {"y": y}, {"h": final[0]}
    return reference


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("name", sorted(TORCH_CELLS))
def test_against_torch_nn(name, T, with_state):
    m = load(name, D=D, N=N)
    x = random_inputs(m, B, T)
    s = random_state(m, B) if with_state else None
    assert_matches_reference(m, torch_nn_reference(name), x, s)
    assert_step_matches_forward(m, x, s)


# ---- sLSTM (Beck et al., 2024)

def slstm_reference(x, p, state):
    """Stabilized exponential gating with a sigmoid forget gate, per head."""
    h, c, n, m = (state[k] for k in "hcnm")
    ys = []
    for t in range(x["x"].shape[1]):
        pre = (torch.einsum("gaed,bd->bgae", p["W"], x["x"][:, t])
               + torch.einsum("gaek,bak->bgae", p["R"], h)     # R mixes within a head
               + p["b"])
        z, log_i, f_raw, o = pre.unbind(1)
        log_f = F.logsigmoid(f_raw)
        m_new = torch.maximum(log_f + m, log_i)
        i_stab, f_stab = torch.exp(log_i - m_new), torch.exp(log_f + m - m_new)
        c = f_stab * c + i_stab * torch.tanh(z)
        n = f_stab * n + i_stab
        h = torch.sigmoid(o) * c / n
        m = m_new
        ys.append(h)
    return {"y": torch.stack(ys, 1)}, {"h": h, "c": c, "n": n, "m": m}


def slstm_state(m, seed=2):
    # a normalizer that has seen inputs is positive; keep c/n of a plausible size
    return random_state(m, B, seed=seed, n=lambda n: n.abs() + 0.5)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T", LENGTHS)
def test_slstm(T, with_state):
    m = load("slstm", D=D, NH=NH, DH=DH)
    x = random_inputs(m, B, T)
    s = slstm_state(m) if with_state else None
    assert_matches_reference(m, slstm_reference, x, s)
    assert_step_matches_forward(m, x, s)


def test_slstm_recurrence_is_block_diagonal_per_head():
    """A head's output does not depend on another head's previous hidden state."""
    m = load("slstm", D=D, NH=NH, DH=DH)
    x = random_inputs(m, 1, 1)
    h0 = torch.zeros(1, NH, DH, dtype=torch.float64, requires_grad=True)
    y, _ = m(state={"h": h0}, **x)
    (grad,) = torch.autograd.grad(y[0, 0, 0].sum(), h0)
    assert grad[0, 1].abs().max() == 0 and grad[0, 0].abs().max() > 0


def test_slstm_stabilizer_does_not_change_the_cell():
    """(c, n, m) and (c e^-δ, n e^-δ, m + δ) are the same cell: the outputs agree, and
    so do the unstabilized c e^m and n e^m at the end."""
    m = load("slstm", D=D, NH=NH, DH=DH)
    x = random_inputs(m, B, 7)
    s = slstm_state(m)
    delta = 3.0 * torch.randn(B, NH, DH, generator=torch.Generator().manual_seed(4),
                              dtype=torch.float64)
    shifted = {**s, "c": s["c"] * torch.exp(-delta), "n": s["n"] * torch.exp(-delta),
               "m": s["m"] + delta}
    y, final = m(state=s, **x)
    y2, final2 = m(state=shifted, **x)
    torch.testing.assert_close(y2, y)
    for k in "cn":
        torch.testing.assert_close(final2[k] * torch.exp(final2["m"]),
                                   final[k] * torch.exp(final["m"]))


def test_slstm_exponential_gates_stay_finite():
    """Pre-activations in the thousands would overflow exp without the stabilizer, or
    underflow i' to 0 / 0 with a badly chosen m_0. From the default state (m_0 = -1e30)
    the normalizer stays >= 1, and h = σ(o) · (a convex combination of tanh values)
    stays in [-1, 1]."""
    m = load("slstm", D=D, NH=NH, DH=DH)
    x = random_inputs(m, B, 13, x=lambda v: 1e4 * v)
    y, _ = m(**x)
    s = None
    for t in range(x["x"].shape[1]):
        _, s = m.step(state=s, x=x["x"][:, t])
        assert all(torch.isfinite(v).all() for v in s.values())
        assert (s["n"] >= 1).all()
    assert torch.isfinite(y).all() and y.abs().max() <= 1


def test_slstm_first_step_sets_the_stabilizer_to_log_i():
    """From the default state, m_1 = ĩ_1 and n_1 = 1, as in the authors' code."""
    m = load("slstm", D=D, NH=NH, DH=DH)
    x = random_inputs(m, B, None)
    _, s = m.step(**x)
    pre_i = torch.einsum("aed,bd->bae", m.W[1], x["x"]) + m.b[1]
    torch.testing.assert_close(s["m"], pre_i)
    torch.testing.assert_close(s["n"], torch.ones_like(s["n"]))


# ---- "LSTM: A Search Space Odyssey" (Greff et al., 2017)

VARIANTS = ["vanilla", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"]


def odyssey_reference(variant):
    """The paper's peephole LSTM with one of its eight changes (or none: vanilla)."""
    def reference(x, p, state):
        y, c = state["y"], state["c"]
        gates = [state.get(k) for k in "ifo"]           # the previous i, f, o (FGR only)
        peep = p["P"] if "P" in p else torch.zeros(3, N, dtype=torch.float64)
        ys = []
        for t in range(x["x"].shape[1]):
            pre = (torch.einsum("gnd,bd->bgn", p["W"], x["x"][:, t])
                   + torch.einsum("gnm,bm->bgn", p["R"], y) + p["b"])
            if variant == "fgr":   # gate rows 1..3 (i, f, o) also read the previous gates
                back = sum(torch.einsum("gnm,bm->bgn", p["Rg"][:, s], gates[s]) for s in range(3))
                pre = torch.cat([pre[:, :1], pre[:, 1:] + back], 1)
            z = pre[:, 0] if variant == "niaf" else torch.tanh(pre[:, 0])
            i = torch.sigmoid(pre[:, 1] + peep[0] * c)
            if variant == "nig":
                i = torch.ones_like(i)
            f = torch.sigmoid(pre[:, 2] + peep[1] * c)
            if variant == "nfg":
                f = torch.ones_like(f)
            if variant == "cifg":
                f = 1 - i
            c = z * i + c * f
            o = torch.sigmoid(pre[:, 3] + peep[2] * c)   # peephole on the new c
            if variant == "nog":
                o = torch.ones_like(o)
            y = (c if variant == "noaf" else torch.tanh(c)) * o
            gates = [i, f, o]
            ys.append(y)
        final = {"y": y, "c": c}
        if variant == "fgr":
            final.update(zip("ifo", gates))
        return {"h": torch.stack(ys, 1)}, final
    return reference


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_lstm_odyssey(variant, T, with_state):
    m = load(f"lstm_odyssey_{variant}", D=D, N=N)
    x = random_inputs(m, B, T)
    s = random_state(m, B) if with_state else None
    assert_matches_reference(m, odyssey_reference(variant), x, s)
    assert_step_matches_forward(m, x, s)


def test_odyssey_vanilla_without_peepholes_is_torch_lstm():
    """With P = 0 the paper's vanilla LSTM is torch.nn.LSTM up to the gate order
    (z, i, f, o against torch's i, f, g, o): ties the hand loop to an outside reference."""
    m = load("lstm_odyssey_vanilla", D=D, N=N)
    with torch.no_grad():
        m.P.zero_()
        m.b.normal_()
    x = random_inputs(m, B, 7)
    s = random_state(m, B)
    order = [1, 2, 0, 3]                                  # torch's i, f, g, o
    weights = {"weight_ih_l0": m.W[order].reshape(4 * N, D),
               "weight_hh_l0": m.R[order].reshape(4 * N, N),
               "bias_ih_l0": m.b[order].reshape(4 * N),
               "bias_hh_l0": torch.zeros(4 * N, dtype=torch.float64)}
    rnn = torch.nn.LSTM(D, N, batch_first=True).double()
    want, (h, c) = functional_call(rnn, weights, (x["x"], (s["y"][None], s["c"][None])))
    y, final = m(state=s, **x)
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(final["y"], h[0])
    torch.testing.assert_close(final["c"], c[0])
