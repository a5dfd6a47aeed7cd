"""cell.function inside flash-linear-attention's GatedLinearAttention layer, on the CPU:
the layer's chunk_gla replaced by specs/gla.rec's function against the same layer with
fla's own PyTorch reference (naive_recurrent_gla), outputs and gradients of the input
and every weight. fla's norm-and-gate is a Triton kernel: both layers get the same
PyTorch equivalent (RMSNorm times swish of the gate). Skipped where fla is absent or
cannot be imported (fla 0.5.2 fails to import with triton 3.9: an autotune key names
no kernel argument; it imports with triton 3.8)."""

import pytest
import torch
from helpers import SPECS

import reclang

try:
    from fla.layers import gla as fla_gla
    from fla.ops.gla.naive import naive_recurrent_gla
except (ImportError, ValueError) as err:  # ValueError: see the module's docstring
    pytest.skip(f"flash-linear-attention cannot be imported: {type(err).__name__}: {err}",
                allow_module_level=True)


CALLS = []  # the ops the layers called


class NormGate(torch.nn.Module):
    """fla's FusedRMSNormGated (swish gate) in PyTorch, sharing its weight."""

    def __init__(self, fused):
        super().__init__()
        self.weight, self.eps = fused.weight, fused.eps

    def forward(self, x, g):
        x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps)
        return x * self.weight * g * torch.sigmoid(g)


def layer_with(op, seed=0):
    """A GatedLinearAttention layer whose chunk_gla is `op`, fla's calling convention."""
    torch.manual_seed(seed)
    layer = fla_gla.GatedLinearAttention(hidden_size=16, expand_k=0.5, expand_v=1.0,
                                         num_heads=2)
    layer.g_norm_swish_gate = NormGate(layer.g_norm_swish_gate)

    def chunk_gla(q, k, v, g, initial_state=None, output_final_state=False,
                  state_v_first=False, cu_seqlens=None, scale=None):
        assert initial_state is None and not output_final_state  # no cache in training
        CALLS.append(op)
        return op(q, k, v, g, scale=scale, cu_seqlens=cu_seqlens)

    return layer, chunk_gla


def run(layer, chunk_gla, x, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(fla_gla, "chunk_gla", chunk_gla)
        return layer(x)[0]


def test_cell_function_runs_inside_fla_gated_linear_attention(monkeypatch):
    # head dims of the layer: K = 16 * 0.5 / 2 = 4, V = 16 / 2 = 8
    f = reclang.load(SPECS / "gla.rec", H=2, K=4, V=8).function()
    ours, ours_op = layer_with(f)
    theirs, theirs_op = layer_with(lambda q, k, v, g, scale, cu_seqlens:
                                   naive_recurrent_gla(q, k, v, g))
    x = torch.randn(2, 80, 16)  # T > 64: the layer calls chunk_gla, not fused_recurrent_gla
    xs = [x.clone().requires_grad_() for _ in range(2)]
    y = run(ours, ours_op, xs[0], monkeypatch)
    want = run(theirs, theirs_op, xs[1], monkeypatch)
    assert CALLS == [f, CALLS[1]] and CALLS[1] is not f
    torch.testing.assert_close(y, want)
    seed = torch.randn_like(want)
    (y * seed).sum().backward()
    (want * seed).sum().backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, msg=name)
