"""cell.function against naive references written here with flash-linear-attention's
argument layouts (q, k, v [B, T, H, K], gates [B, T, H, K] or [B, T, H], states
[N, H, K, V], scale on q, default K ** -0.5), in float64: outputs, final states and
gradients, with initial states and packed sequences (cu_seqlens); then inside fla's
GatedLinearAttention layer where fla can be imported."""

import itertools
import re

import pytest
import torch
from helpers import SPECS

import reclang

F = torch.nn.functional
H, K, V = 2, 4, 3


def naive_gla(q, k, v, g, scale=None, initial_state=None):
    """fla.ops.gla.naive.naive_recurrent_gla, in float64 and [B, T, H, K]."""
    scale = K ** -0.5 if scale is None else scale
    B, T = q.shape[:2]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    o = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None] + k[:, t, ..., None] * v[:, t, :, None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(o, 1), S


def naive_simple_gla(q, k, v, g, scale=None, initial_state=None):
    """simple GLA: one scalar decay per head, g [B, T, H]."""
    return naive_gla(q, k, v, g[..., None].expand(*g.shape, K), scale, initial_state)


def naive_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None):
    """fla.ops.gated_delta_rule.naive.naive_recurrent_gated_delta_rule's loop."""
    scale = K ** -0.5 if scale is None else scale
    B, T = q.shape[:2]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    o = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        u = (v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S)) * beta[:, t, :, None]
        S = S + k[:, t, ..., None] * u[..., None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(o, 1), S


def naive_delta_rule(q, k, v, beta, scale=None, initial_state=None):
    """fla.ops.delta_rule.naive.delta_rule_recurrence: the gated rule without decay."""
    return naive_gated_delta_rule(q, k, v, torch.zeros_like(beta), beta, scale, initial_state)


CASES = {  # spec: (naive reference, the inputs' gates as fla's layers make them)
    "gla": (naive_gla, {"g": F.logsigmoid}),
    "simple_gla": (naive_simple_gla, {"g": F.logsigmoid}),
    "delta_net": (naive_delta_rule, {"k": lambda x: F.normalize(x, dim=-1),
                                     "beta": torch.sigmoid}),
    "gated_delta_net": (naive_gated_delta_rule, {"k": lambda x: F.normalize(x, dim=-1),
                                                 "g": F.logsigmoid, "beta": torch.sigmoid}),
}
SHAPES = {"q": (H, K), "k": (H, K), "v": (H, V), "beta": (H,)}


def with_scale_hyper(name: str):
    """The catalogue spec with `scale` as a hyperparameter instead of `K ** -0.5`."""
    text = (SPECS / f"{name}.rec").read_text()
    text = re.sub(r"\n    scale = K \*\* -0\.5\n", "\n", text)
    text = re.sub(r"(cell \w+\([^)]*)\)", r"\1, scale = 1.0)", text, count=1)
    return reclang.loads(text, f"{name}.rec", H=H, K=K, V=V)


def inputs_for(cell, name, B, T, seed=0):
    gen = torch.Generator().manual_seed(seed)
    gates = CASES[name][1]
    out = []
    for d in cell.ir.inputs:
        x = torch.randn(B, T, *d.shape, generator=gen, dtype=torch.float64)
        out.append(gates.get(d.name, lambda x: x)(x).requires_grad_())
    return out


def assert_same(got, want, wrt):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    seeds = [torch.randn_like(b) for b in want]
    losses = [sum((t * s).sum() for t, s in zip(ts, seeds)) for ts in (got, want)]
    for a, b in zip(torch.autograd.grad(losses[0], wrt), torch.autograd.grad(losses[1], wrt)):
        torch.testing.assert_close(a, b)


BACKENDS = ["auto", "sequential", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("scale", [None, 0.3])
def test_function_is_fla_naive(name, backend, scale):
    cell = with_scale_hyper(name) if scale else reclang.load(SPECS / f"{name}.rec", H=H, K=K,
                                                                V=V)
    f = cell.function(backend)
    xs = inputs_for(cell, name, 2, 7)
    h0 = torch.randn(2, H, K, V, dtype=torch.float64, requires_grad=True)
    o, final = f(*xs, scale=scale, initial_state=h0, output_final_state=True)
    want = CASES[name][0](*xs, scale=scale, initial_state=h0)
    assert_same((o, final), want, [*xs, h0])
    o2, none = f(*xs, scale=scale)
    assert none is None
    torch.testing.assert_close(o2, CASES[name][0](*xs, scale=scale)[0])


@pytest.mark.parametrize("name", list(CASES))
def test_function_packed_sequences(name):
    """cu_seqlens: each sequence starts from its own initial state [N, H, K, V]."""
    cell = reclang.load(SPECS / f"{name}.rec", H=H, K=K, V=V)
    f = cell.function()
    xs = inputs_for(cell, name, 1, 9)
    cu = torch.tensor([0, 4, 5, 9])
    h0 = torch.randn(3, H, K, V, dtype=torch.float64, requires_grad=True)
    o, final = f(*xs, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    parts = [CASES[name][0](*(x[:, a:b] for x in xs), initial_state=h0[i:i + 1])
             for i, (a, b) in enumerate(itertools.pairwise(cu))]
    want = (torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts]))
    assert_same((o, final), want, [*xs, h0])


def test_function_refusals():
    gla = reclang.load(SPECS / "gla.rec", H=H, K=K, V=V)
    f = gla.function()
    q = torch.randn(1, 3, H, K)
    with pytest.raises(TypeError, match="declares no hyperparameter 'scale'"):
        f(q, q, torch.randn(1, 3, H, V), q, scale=0.5)
    with pytest.raises(TypeError, match=r"takes 4 inputs \(q, k, v, g\), positional, got 3"):
        f(q, q, q)
    with pytest.raises(reclang.RecError, match="has params .*: a function has no weights"):
        reclang.load(SPECS / "lstm.rec").function()
