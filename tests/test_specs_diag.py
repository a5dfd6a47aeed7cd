"""Elementwise (diagonal) recurrences and small dense ones against hand loops written
from their papers' equations (float64; outputs, final states and gradients)."""

import pytest
import torch
from helpers import (LENGTHS, assert_matches_reference, assert_step_matches_forward, load,
                     random_inputs, random_state)

F = torch.nn.functional
B = 2


def scan(step, outputs):
    """A reference loop: `step(x_t, params, state) -> state`, then `outputs(x_t, params,
    state) -> dict`; returns stacked outputs and the final state."""
    def reference(x, params, state):
        state, outs = dict(state), []
        for t in range(next(iter(x.values())).shape[1]):
            x_t = {k: v[:, t] for k, v in x.items()}
            state = step(x_t, params, state)
            outs.append(outputs(x_t, params, state))
        return {k: torch.stack([o[k] for o in outs], 1) for k in outs[0]}, state
    return reference


def linear(W, x, b=0):
    return x @ W.T + b


def min_gru(x, p, s):
    z = torch.sigmoid(linear(p["Wz"], x["x"], p["bz"]))
    return {"h": (1 - z) * s["h"] + z * linear(p["Wh"], x["x"], p["bh"])}


def min_lstm(x, p, s):
    f = torch.sigmoid(linear(p["Wf"], x["x"], p["bf"]))
    i = torch.sigmoid(linear(p["Wi"], x["x"], p["bi"]))
    return {"h": f / (f + i) * s["h"] + i / (f + i) * linear(p["Wh"], x["x"], p["bh"])}


def lru_step(x, p, s):
    lam = torch.exp(-torch.exp(p["nu_log"]) + 1j * torch.exp(p["theta_log"]))
    gamma = torch.sqrt(1 - lam.abs() ** 2)
    Bx = x["x"].to(torch.complex128) @ torch.complex(p["B_re"], p["B_im"]).T
    return {"h": lam * s["h"] + gamma * Bx}


def lru_out(x, p, s):
    C = torch.complex(p["C_re"], p["C_im"])
    return {"y": (s["h"] @ C.T).real + p["Dskip"] * x["x"]}


def s4d_step(x, p, s):
    A = torch.complex(-torch.exp(p["A_re_log"]), p["A_im"])         # [N]
    dtA = torch.exp(p["log_dt"])[:, None] * A                         # [D, N]
    Bbar = (torch.exp(dtA) - 1) / A * torch.complex(p["B_re"], p["B_im"])
    return {"h": torch.exp(dtA) * s["h"] + Bbar * x["x"][..., None]}


def s4d_out(x, p, s):
    C = torch.complex(p["C_re"], p["C_im"])
    return {"y": 2 * (C * s["h"]).sum(-1).real + p["Dskip"] * x["x"]}


def lmu_matrices(M, theta):
    i = torch.arange(M, dtype=torch.float64)[:, None]
    j = torch.arange(M, dtype=torch.float64)[None, :]
    A = (2 * i + 1) * torch.where(i < j, -1.0, (-1.0) ** (i - j + 1))
    Bm = (2 * torch.arange(M, dtype=torch.float64) + 1) * (-1.0) ** torch.arange(M)
    return A / theta, Bm / theta


def lmu_step(x, p, s):
    A, Bm = lmu_matrices(6, 16.0)
    u = x["x"] @ p["ex"] + s["h"] @ p["eh"] + s["m"] @ p["em"]
    m = s["m"] + s["m"] @ A.T + Bm * u[:, None]
    h = torch.tanh(linear(p["Wx"], x["x"]) + linear(p["Wh"], s["h"]) + linear(p["Wm"], m))
    return {"h": h, "m": m}


def hgrn2(x, p, s):
    f = torch.exp(x["g"])[..., None]
    return {"S": f * s["S"] + (1 - f) * x["v"][..., None, :]}


def rg_lru(x, p, s, c=8.0):
    r = torch.sigmoid(linear(p["Wa"], x["x"], p["ba"]))
    i = torch.sigmoid(linear(p["Wx"], x["x"], p["bx"]))
    a = torch.sigmoid(p["Lambda"]) ** (c * r)
    return {"h": a * s["h"] + torch.sqrt(1 - a ** 2) * (i * x["x"])}


def mamba_s6(x, p, s):
    dt = F.softplus(linear(p["Wdt"], linear(p["Wr"], x["x"]), p["bdt"]))     # [B, D]
    A = -torch.exp(p["A_log"])                                                 # [D, N]
    Bt = linear(p["Wb"], x["x"])                                               # [B, N]
    return {"s": torch.exp(dt[..., None] * A) * s["s"] + (dt * x["x"])[..., None] * Bt[:, None]}


def mamba_s6_out(x, p, s):
    C = linear(p["Wc"], x["x"])
    return {"y": torch.einsum("bn,bdn->bd", C, s["s"]) + p["Dskip"] * x["x"]}


def mamba2(x, p, s):
    delta = F.softplus(x["dt"] + p["dt_bias"])                                  # [B, H]
    decay = torch.exp(-delta * torch.exp(p["A_log"]))[..., None, None]
    write = (delta[..., None] * x["x"])[..., None] * x["B"][:, None, None, :]
    return {"S": decay * s["S"] + write}


def mamba2_out(x, p, s):
    return {"y": torch.einsum("bn,bhpn->bhp", x["C"], s["S"]) + p["Dskip"][:, None] * x["x"]}


CELLS = {  # name: (hypers, step, outputs, input transforms)
    "min_gru": ({"D": 3, "N": 4}, min_gru, lambda x, p, s: {"y": s["h"]}, {}),
    "min_lstm": ({"D": 3, "N": 4}, min_lstm, lambda x, p, s: {"y": s["h"]}, {}),
    "lru": ({"D": 3, "N": 4}, lru_step, lru_out, {}),
    "s4d": ({"D": 3, "N": 4}, s4d_step, s4d_out, {}),
    "lmu": ({"D": 2, "N": 3, "M": 6, "theta": 16.0}, lmu_step,
            lambda x, p, s: {"y": s["h"]}, {}),
    "hgrn": ({"D": 5}, lambda x, p, s: {"h": torch.exp(x["g"]) * s["h"] + x["x"]},
             lambda x, p, s: {"o": s["h"]}, {"g": F.logsigmoid}),
    "hgrn2": ({"H": 2, "K": 4, "V": 3}, hgrn2, lambda x, p, s: {"o": torch.einsum(
        "bhk,bhkv->bhv", x["q"] * 4 ** -0.5, s["S"])}, {"g": F.logsigmoid}),
    "rg_lru": ({"D": 4}, rg_lru, lambda x, p, s: {"y": s["h"]}, {}),
    "mamba_s6": ({"D": 4, "N": 3, "R": 2}, mamba_s6, mamba_s6_out, {}),
    "mamba2": ({"H": 2, "P": 3, "N": 4}, mamba2, mamba2_out, {}),
}


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("with_state", [False, True])
def test_against_reference(name, T, with_state):
    hypers, step, outputs, transforms = CELLS[name]
    m = load(name, **hypers)
    x = random_inputs(m, B, T, **transforms)
    s = random_state(m, B) if with_state else None
    assert_matches_reference(m, scan(step, outputs), x, s)
    assert_step_matches_forward(m, x, s)


def test_lru_initialization_lies_on_the_ring():
    m = load("lru", D=3, N=2000)
    radius = torch.exp(-torch.exp(m.nu_log.detach()))
    assert 0.4 - 1e-9 <= radius.min() and radius.max() <= 0.99 + 1e-9
    assert radius.std() > 0.05  # spread over the ring, not collapsed


def test_s4d_lin_initialization():
    m = load("s4d", D=2, N=4)
    A = torch.complex(-torch.exp(m.A_re_log.detach()), m.A_im.detach())
    expected = torch.complex(torch.full((4,), -0.5, dtype=torch.float64),
                             torch.pi * torch.arange(4, dtype=torch.float64))
    torch.testing.assert_close(A, expected)


def test_rg_lru_initial_decay_range():
    m = load("rg_lru", D=500)
    a_c = torch.sigmoid(m.Lambda.detach()) ** 8
    assert 0.9 - 1e-9 <= a_c.min() and a_c.max() <= 0.999 + 1e-9
