"""Classic RNN cells: LSTM, GRU and Elman against torch.nn (weights copied in through
functional_call, so gradients reach the spec's params), sLSTM and the LSTM variants of
"LSTM: A Search Space Odyssey" against hand loops from the papers' equations."""

import pytest
import torch
from helpers import (LENGTHS, assert_matches_reference, assert_step_matches_forward, load,
                     random_inputs, random_state)
from torch.func import functional_call

D, N, B = 3, 4, 2


def torch_rnn(kind, weights):
    """A reference through torch.nn.{LSTM, GRU, RNN}; `weights(params)` builds its
    weight dict from the spec's params with differentiable reshapes."""
    module = getattr(torch.nn, kind)(D, N, batch_first=True).double()

    def reference(x, params, state):
        h0 = state["h"].unsqueeze(0)
        hidden = (h0, state["c"].unsqueeze(0)) if kind == "LSTM" else h0
        y, final = functional_call(module, weights(params), (x["x"], hidden))
        if kind == "LSTM":
            return {"y": y}, {"h": final[0][0], "c": final[1][0]}
        return {"y": y}, {"h": final[0]}
    return reference


def lstm_weights(p):
    return {"weight_ih_l0": p["W"].reshape(4 * N, D), "weight_hh_l0": p["U"].reshape(4 * N, N),
            "bias_ih_l0": p["b"].reshape(4 * N), "bias_hh_l0": torch.zeros(4 * N).double()}


def gru_weights(p):
    return {"weight_ih_l0": p["W"].reshape(3 * N, D), "weight_hh_l0": p["U"].reshape(3 * N, N),
            "bias_ih_l0": p["bw"].reshape(3 * N), "bias_hh_l0": p["bu"].reshape(3 * N)}


def elman_weights(p):
    return {"weight_ih_l0": p["W"], "weight_hh_l0": p["U"], "bias_ih_l0": p["b"],
            "bias_hh_l0": torch.zeros(N).double()}


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("name, reference", [
    ("lstm", torch_rnn("LSTM", lstm_weights)),
    ("gru", torch_rnn("GRU", gru_weights)),
    ("elman", torch_rnn("RNN", elman_weights)),
])
@pytest.mark.parametrize("with_state", [False, True])
def test_against_torch_nn(name, reference, T, with_state):
    m = load(name, D=D, N=N)
    x = random_inputs(m, B, T)
    s = random_state(m, B) if with_state else None
    assert_matches_reference(m, reference, x, s)
    assert_step_matches_forward(m, x, s)


def slstm_reference(x, p, state):
    h, c, n, m = (state[k] for k in "hcnm")
    ys = []
    for t in range(x["x"].shape[1]):
        pre = (torch.einsum("gaed,bd->bgae", p["W"], x["x"][:, t])
               + torch.einsum("gaef,baf->bgae", p["R"], h) + p["b"])
        z, i, f, o = pre.unbind(1)
        m_new = torch.maximum(f + m, i)
        input_gate, forget_gate = torch.exp(i - m_new), torch.exp(f + m - m_new)
        c = forget_gate * c + input_gate * torch.tanh(z)
        n = forget_gate * n + input_gate
        h = torch.sigmoid(o) * c / n
        m = m_new
        ys.append(h)
    return {"y": torch.stack(ys, 1)}, {"h": h, "c": c, "n": n, "m": m}


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True])
def test_slstm(T, with_state):
    m = load("slstm", D=D, NH=2, DH=3)
    x = random_inputs(m, B, T)
    s = random_state(m, B, n=lambda n: n.abs() + 0.5) if with_state else None
    assert_matches_reference(m, slstm_reference, x, s)
    assert_step_matches_forward(m, x, s)


def test_slstm_recurrence_is_block_diagonal_per_head():
    """A head's output does not depend on another head's previous hidden state."""
    m = load("slstm", D=D, NH=2, DH=3)
    x = random_inputs(m, 1, 1)
    h0 = torch.zeros(1, 2, 3, dtype=torch.float64, requires_grad=True)
    y, _ = m(state={"h": h0}, **x)
    (grad,) = torch.autograd.grad(y[0, 0, 0].sum(), h0)
    assert grad[0, 1].abs().max() == 0 and grad[0, 0].abs().max() > 0


def odyssey_reference(variant):
    """The peephole LSTM of Greff et al. (2017) with one of its eight changes."""
    def reference(x, p, state):
        y, c = state["y"], state["c"]
        gates = [state.get(k) for k in ("gi", "gf", "go")]
        peep = p.get("P", torch.zeros(3, N, dtype=torch.float64))
        ys = []
        for t in range(x["x"].shape[1]):
            pre = torch.einsum("gnd,bd->bgn", p["W"], x["x"][:, t]) + \
                torch.einsum("gnm,bm->bgn", p["R"], y) + p["b"]
            if variant == "fgr":
                pre[:, 1:] = pre[:, 1:] + sum(torch.einsum("gnm,bm->bgn", p["Rg"][:, s], gates[s])
                                              for s in range(3))
            z = pre[:, 0] if variant == "niaf" else torch.tanh(pre[:, 0])
            i = torch.sigmoid(pre[:, 1] + peep[0] * c)
            f = torch.sigmoid(pre[:, 2] + peep[1] * c)
            i = torch.ones_like(i) if variant == "nig" else i
            f = torch.ones_like(f) if variant == "nfg" else 1 - i if variant == "cifg" else f
            c = z * i + c * f
            o = torch.sigmoid(pre[:, 3] + peep[2] * c)
            o = torch.ones_like(o) if variant == "nog" else o
            y = (c if variant == "noaf" else torch.tanh(c)) * o
            gates = [i, f, o]
            ys.append(y)
        final = {"y": y, "c": c}
        if variant == "fgr":
            final.update(gi=gates[0], gf=gates[1], go=gates[2])
        return {"h": torch.stack(ys, 1)}, final
    return reference


VARIANTS = ["vanilla", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"]


@pytest.mark.parametrize("T", (1, 7))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("with_state", [False, True])
def test_lstm_odyssey(variant, T, with_state):
    m = load(f"lstm_odyssey_{variant}", D=D, N=N)
    x = random_inputs(m, B, T)
    s = random_state(m, B) if with_state else None
    assert_matches_reference(m, odyssey_reference(variant), x, s)
    assert_step_matches_forward(m, x, s)
