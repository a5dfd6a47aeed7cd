import pytest
import torch
from helpers import (LENGTHS, assert_matches_reference, assert_step_matches_forward, load,
                     random_inputs, random_state)

F = torch.nn.functional


def gla_reference(inputs, params, state):
    q, k, v, g = (inputs[n] for n in "qkvg")
    S = state["S"]
    outs = []
    for t in range(q.shape[1]):
        S = torch.exp(g[:, t]).unsqueeze(-1) * S + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * q.shape[-1] ** -0.5, S))
    return {"o": torch.stack(outs, 1)}, {"S": S}


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True])
def test_gla(T, with_state):
    m = load("gla", H=2, K=4, V=3)
    x = random_inputs(m, 2, T, g=lambda x: F.logsigmoid(x))
    s = random_state(m, 2) if with_state else None
    assert_matches_reference(m, gla_reference, x, s)
    assert_step_matches_forward(m, x, s)
