"""ParaRNN's cells (para_gru, para_lstm) and IndRNN, each against an independent loop
written here from the papers' equations: the sequential module and the newton one,
float64, values and gradients (inputs, params, initial states)."""

import pytest
import torch
from helpers import (
    LENGTHS,
    SPECS,
    assert_matches_reference,
    assert_step_matches_forward,
    one_thread,  # noqa: F401  (an autouse fixture: one intra-op thread)
    random_inputs,
    random_state,
)

import reclang

B = 2


def para_gru(x, p, state):
    """z, r, candidate with diagonal recurrent weights a (Danieli et al., 2025)."""
    h, ys = state["h"], []
    for t in range(x["x"].shape[1]):
        wz, wr, wc = (torch.einsum("gnd,bd->bgn", p["W"], x["x"][:, t]) + p["b"]).unbind(1)
        az, ar, ac = p["a"]
        z = torch.sigmoid(wz + az * h)
        r = torch.sigmoid(wr + ar * h)
        candidate = torch.tanh(wc + ac * (r * h))
        h = (1 - z) * h + z * candidate
        ys.append(h)
    return {"y": torch.stack(ys, 1)}, {"h": h}


def para_lstm(x, p, state):
    """i, f, g, o with diagonal recurrent weights a (Danieli et al., 2025)."""
    h, c, ys = state["h"], state["c"], []
    for t in range(x["x"].shape[1]):
        pre = torch.einsum("gnd,bd->bgn", p["W"], x["x"][:, t]) + p["a"] * h[:, None] + p["b"]
        i, f, g, o = pre.unbind(1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    return {"y": torch.stack(ys, 1)}, {"h": h, "c": c}


def indrnn(x, p, state):
    """h_t = relu(W x_t + u ⊙ h_{t-1} + b) (Li et al., 2018)."""
    h, ys = state["h"], []
    for t in range(x["x"].shape[1]):
        h = torch.relu(x["x"][:, t] @ p["W"].T + p["u"] * h + p["b"])
        ys.append(h)
    return {"y": torch.stack(ys, 1)}, {"h": h}


REFERENCES = {"para_gru": para_gru, "para_lstm": para_lstm, "indrnn": indrnn}


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("backend", ["sequential", "newton"])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_the_papers_equations(name, backend, T, with_state):
    torch.manual_seed(0)
    m = reclang.load(SPECS / f"{name}.rec", D=3, N=4).module(backend).double()
    x = random_inputs(m, B, T)
    s = random_state(m, B) if with_state else None
    assert_matches_reference(m, REFERENCES[name], x, s)
    assert_step_matches_forward(m, x, s)


def test_the_jacobians_are_what_pararnn_makes_them():
    """Diagonal recurrences: ParaGRU's and IndRNN's Jacobians are diagonal, ParaLSTM's a
    2x2 block per unit (h and c)."""
    kinds = {n: reclang.load(SPECS / f"{n}.rec").form("newton") for n in REFERENCES}
    assert {n: (j.kind, j.size) for n, j in kinds.items()} == {
        "para_gru": ("diagonal", 1), "indrnn": ("diagonal", 1),
        "para_lstm": ("block-diagonal", 2)}
