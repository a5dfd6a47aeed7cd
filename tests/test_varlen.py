"""Variable-length batches (lengths and cu_seqlens) on every backend: each sequence
gets exactly what it gets when run alone, step by step; padding is never computed."""

from pathlib import Path

import pytest
import torch
from helpers import random_inputs, random_state

import reclang

SPECS = Path(__file__).resolve().parent.parent / "specs"
CASES = [("gla", "sequential", dict(H=2, K=4, V=3)), ("lstm", "sequential", dict(D=3, N=4)),
         ("min_gru", "sequential", dict(D=3, N=4)), ("min_gru", "scan", dict(D=3, N=4)),
         ("lru", "scan", dict(D=3, N=4)), ("lru", "fft", dict(D=3, N=4)),
         ("gla", "chunk", dict(H=2, K=4, V=3)), ("delta_net", "chunk", dict(H=2, K=4, V=3)),
         ("min_gru", "triton", dict(D=3, N=4)), ("lru", "triton", dict(D=3, N=4)),
         ("gla", "triton", dict(H=2, K=4, V=3)), ("delta_net", "triton", dict(H=2, K=4, V=3)),
         ("lstm", "triton", dict(D=3, N=4)), ("slstm", "triton", dict(D=3, NH=2, DH=2))]


def module(name, backend, hypers):
    torch.manual_seed(0)
    return reclang.load(SPECS / f"{name}.rec", **hypers).module(backend).double().to(
        device(backend))


def device(backend):
    """Triton kernels run on the GPU where there is one (else under the interpreter)."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def on(backend, tensors: dict) -> dict:
    return {k: v.to(device(backend)) for k, v in tensors.items()}


def alone(m, inputs, state):
    """One sequence [1, n, ...] run step by step: the reference."""
    s, outs = state, []
    for t in range(next(iter(inputs.values())).shape[1]):
        y, s = m.step(state=s, **{k: v[:, t] for k, v in inputs.items()})
        outs.append(y if torch.is_tensor(y) else y[m.ir.outputs[0].arg])
    return torch.stack(outs, 1), s


@pytest.mark.parametrize("name, backend, hypers", CASES)
def test_lengths(name, backend, hypers):
    m = module(name, backend, hypers)
    lengths = torch.tensor([5, 1, 9, 5])
    x = on(backend, random_inputs(m, 4, 9, g=torch.nn.functional.logsigmoid))
    x = {k: v.requires_grad_() for k, v in x.items()}
    s0 = on(backend, random_state(m, 4))
    y, final = m(state=s0, lengths=lengths, **x)
    for b, n in enumerate(lengths.tolist()):
        want_y, want_s = alone(m, {k: v[b:b + 1, :n] for k, v in x.items()},
                               {k: v[b:b + 1] for k, v in s0.items()})
        torch.testing.assert_close(y[b:b + 1, :n], want_y)
        assert torch.count_nonzero(y[b, n:]) == 0
        for k in final:
            torch.testing.assert_close(final[k][b:b + 1], want_s[k])
    y.sum().backward()
    grad = next(iter(x.values())).grad
    assert grad[1, 1:].abs().sum() == 0 and grad[1, 0].abs().sum() > 0  # padding untouched


@pytest.mark.parametrize("name, backend, hypers", CASES)
def test_cu_seqlens_resets_states_at_boundaries(name, backend, hypers):
    m = module(name, backend, hypers)
    cu = torch.tensor([0, 4, 5, 12, 16])
    x = on(backend, random_inputs(m, 1, 16, g=torch.nn.functional.logsigmoid))
    s0 = on(backend, random_state(m, 4))
    y, final = m(state=s0, cu_seqlens=cu, **x)
    assert y.shape[:2] == (1, 16) and all(v.shape[0] == 4 for v in final.values())
    for i, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        want_y, want_s = alone(m, {k: v[:, start:end] for k, v in x.items()},
                               {k: v[i:i + 1] for k, v in s0.items()})
        torch.testing.assert_close(y[:, start:end], want_y)
        for k in final:
            torch.testing.assert_close(final[k][i:i + 1], want_s[k])
    # without a given state every sequence starts from the spec's initial state
    y0, _ = m(cu_seqlens=cu, **x)
    want, _ = alone(m, {k: v[:, 5:12] for k, v in x.items()}, None)
    torch.testing.assert_close(y0[:, 5:12], want)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(lengths=torch.tensor([3, 7])), ValueError, "every sequence needs 1 to 5 steps"),
    (dict(lengths=torch.tensor([3])), ValueError, "expected 2 lengths"),
    (dict(cu_seqlens=torch.tensor([0, 5])), ValueError, "batch of 1"),
    (dict(lengths=torch.tensor([1, 1]), cu_seqlens=torch.tensor([0, 5])), TypeError, "not both"),
])
def test_bad_varlen_arguments(kwargs, error, message):
    m = module("min_gru", "sequential", dict(D=3, N=4))
    with pytest.raises(error, match=message):
        m(x=torch.randn(2, 5, 3, dtype=torch.float64), **kwargs)


def test_packed_offsets_must_cover_the_sequence():
    m = module("min_gru", "sequential", dict(D=3, N=4))
    with pytest.raises(ValueError, match="from 0 to the packed length 6"):
        m(x=torch.randn(1, 6, 3, dtype=torch.float64), cu_seqlens=torch.tensor([0, 4]))


def test_an_input_cannot_be_named_like_a_call_argument():
    spec = "cell c(D = 2):\n    input lengths[D]\n    out y[d] = lengths[d]\n"
    with pytest.raises(reclang.RecError, match="argument of the module call"):
        reclang.loads(spec).module()
