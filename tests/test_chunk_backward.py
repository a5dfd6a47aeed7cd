"""The chunkwise form's hand-written backward for a scalar decay without a low-rank part
(runtime/chunk_backward.py): gradcheck and gradgradcheck of the Function in float64,
against a plain loop, and the cells on it (mLSTM, RetNet, Mamba-2) against the
sequential backend under segments, varlen, non-finite inputs, decays of 0, torch.func
and torch.compile."""

import pytest
import torch
from helpers import (
    MATRIX_TRANSFORMS,
    as_reference,
    assert_matches_reference,
    random_inputs,
    random_state,
    small,
)
from test_torch_compile import run_with_grads
from torch.func import grad, jacrev, vmap

import reclang
from reclang.runtime.chunk import LOG_ZERO, chunk_affine
from reclang.runtime.chunk_backward import ScalarDecayChunks
from reclang.runtime.chunk_layout import flat_rows, in_chunks
from reclang.schedule import ChunkSchedule

F = torch.nn.functional
ON_IT = ["mlstm", "retnet", "mamba2", "linear_attn", "simple_gla"]


def operands(T, Ri=1, Rq=1, seed=0, B=2, H=2, K=3, V=2):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    w = -F.softplus(rand(B, T, H, 1))
    return [x.requires_grad_() for x in (w, rand(B, T, Ri, H, K), rand(B, T, Ri, H, V),
                                         rand(B, T, Rq, H, K), rand(B, H, K, V))]


def every_output(w, k, v, q, h0, C):
    """The Function's outputs (o, final state, start states) on sequences [B, T, ...],
    chunked as runtime/chunk_backward.py scalar_chunkwise does."""
    w, *rows = in_chunks((w, k, v, q), C)
    return ScalarDecayChunks.apply(w, *(flat_rows(x) for x in rows), h0, q.shape[2],
                                   k.shape[2])


def loop(w, k, v, q, h0):
    """o_t = q_tᵀ S_{t-1}, S_t = exp(w_t) S_{t-1} + Σ_r k_{t,r} v_{t,r}ᵀ, step by step."""
    h, outs = h0, []
    for t in range(w.shape[1]):
        outs.append(torch.einsum("brhk,bhkv->brhv", q[:, t], h))
        h = torch.exp(w[:, t])[..., None] * h + torch.einsum("brhk,brhv->bhkv", k[:, t], v[:, t])
    return torch.stack(outs, 1), h


def graph_nodes(y) -> set:
    """The names of the autograd nodes that y comes from."""
    seen, todo = {}, [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and id(node) not in seen:
            seen[id(node)] = type(node).__name__
            todo.extend(n for n, _ in node.next_functions)
    return set(seen.values())


CASES = [(1, 1, 1, 1), (1, 4, 2, 1), (7, 4, 1, 1), (13, 4, 2, 3), (8, 4, 3, 2), (5, 8, 1, 2)]


@pytest.mark.parametrize("T, chunk, Ri, Rq", CASES)
def test_gradients_equal_the_loop(T, chunk, Ri, Rq):
    x = operands(T, Ri, Rq, seed=T)
    out, h = chunk_affine(x[0], None, None, *x[1:], chunk=chunk, segment=1024)
    assert "ScalarDecayChunksBackward" in graph_nodes(out)
    want_out, want_h = loop(*x)
    torch.testing.assert_close(out, want_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(h, want_h, atol=1e-12, rtol=1e-10)
    g = torch.Generator().manual_seed(1)
    d_out, d_h = (torch.randn(y.shape, generator=g, dtype=y.dtype) for y in (out, h))
    got = torch.autograd.grad((out * d_out).sum() + (h * d_h).sum(), x)
    want = torch.autograd.grad((want_out * d_out).sum() + (want_h * d_h).sum(), x)
    for name, a, b in zip(("w", "k", "v", "q", "h0"), got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("T, chunk, Ri, Rq", [(1, 1, 1, 1), (7, 4, 2, 3), (5, 8, 1, 2)])
def test_gradcheck_and_gradgradcheck(T, chunk, Ri, Rq):
    """Every output, the chunk start states too (what the backward saves: its own
    gradient is the second derivative's path through them). Small sizes: numerical
    Jacobians of second derivatives take minutes beyond."""
    x = operands(T, Ri, Rq, seed=T + 1, B=1, H=1, K=2, V=2)
    f = lambda *x: every_output(*x, min(chunk, T))  # noqa: E731
    assert torch.autograd.gradcheck(f, x, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, x, fast_mode=True)


def test_only_one_output_used():
    """Unused outputs reach the backward as None (grads are not materialized)."""
    x = operands(9, 2, 2, B=1, H=1, K=2, V=2)
    f = lambda *x: every_output(*x, 4)  # noqa: E731
    assert torch.autograd.gradcheck(lambda *x: f(*x)[0], x)
    assert torch.autograd.gradcheck(lambda *x: f(*x)[1], x)


def test_decays_of_zero():
    """A log decay of LOG_ZERO (as causal_pass raises -inf to) is a decay of exactly 0:
    the gradients stay finite and equal the loop's."""
    w, k, v, q, h0 = operands(11, 1, 2)
    w = w.detach().clone()
    w[:, 3], w[1, 8] = LOG_ZERO[torch.float64], float("-inf")
    w.requires_grad_()
    out, h = chunk_affine(w, None, None, k, v, q, h0, chunk=4, segment=1024)
    want_out, want_h = loop(torch.clamp(w, min=LOG_ZERO[w.dtype]), k, v, q, h0)
    got = torch.autograd.grad(out.sum() + h.sum(), (w, k, v, q, h0))
    want = torch.autograd.grad(want_out.sum() + want_h.sum(), (w, k, v, q, h0))
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def pair(name, **schedule):
    torch.manual_seed(0)
    cell = small(name)
    chunked = cell.module("chunk", schedule=ChunkSchedule(schedule.get("chunk", 4),
                                                          schedule.get("segment", 1024)))
    return chunked.double(), cell.module("sequential").double()


@pytest.mark.parametrize("name", ON_IT)
@pytest.mark.parametrize("T, segment", [(1, 1024), (13, 1024), (13, 8), (17, 4)])
def test_cells_on_it_match_sequential(name, T, segment):
    chunked, sequential = pair(name, segment=segment)
    x = random_inputs(chunked, 2, T, seed=T, **MATRIX_TRANSFORMS.get(name, {}))
    assert_matches_reference(chunked, as_reference(sequential), x, random_state(chunked, 2))


@pytest.mark.parametrize("varlen", [{"lengths": torch.tensor([11, 3, 7])},
                                    {"cu_seqlens": torch.tensor([0, 5, 6, 11])}])
def test_varlen_on_it(varlen):
    chunked, sequential = pair("mlstm")
    B = 1 if "cu_seqlens" in varlen else 3
    x = random_inputs(chunked, B, 11, **MATRIX_TRANSFORMS.get("mlstm", {}))
    assert_matches_reference(chunked, as_reference(sequential), x, random_state(chunked, 3),
                             varlen=varlen)


def test_non_finite_inputs_stay_causal():
    """causal_pass's second run: outputs before a NaN are finite, with finite gradients
    of the loss over them."""
    chunked, sequential = pair("retnet")
    x = random_inputs(chunked, 2, 11)
    x = {n: t.clone() for n, t in x.items()}
    first = next(iter(x))
    x[first][:, 6] = float("nan")
    leaves = {n: t.requires_grad_() for n, t in x.items()}
    y, _ = chunked(**leaves)
    want, _ = sequential(**{n: t.detach() for n, t in x.items()})
    torch.testing.assert_close(y[:, :6], want[:, :6])
    g = torch.autograd.grad(y[:, :6].sum(), leaves[first])[0]
    assert torch.isfinite(g[:, :6]).all()


def test_torch_func_on_it():
    chunked, _ = pair("retnet")
    names = [d.name for d in chunked.ir.inputs]
    xs = [random_inputs(chunked, 2, 5, seed=s) for s in (1, 2)]

    def f(*args):
        return chunked(**dict(zip(names, args)))[0]

    got = vmap(f)(*[torch.stack([x[n] for x in xs]) for n in names])
    torch.testing.assert_close(got, torch.stack([f(*[x[n] for n in names]) for x in xs]))
    first, rest = xs[0][names[0]], [xs[0][n] for n in names[1:]]
    leaf = first.clone().requires_grad_()
    torch.testing.assert_close(grad(lambda a: f(a, *rest).square().sum())(first),
                               torch.autograd.grad(f(leaf, *rest).square().sum(), leaf)[0])
    first, rest = first[:1, :3], [r[:1, :3] for r in rest]
    torch.testing.assert_close(jacrev(lambda a: f(a, *rest))(first),
                               torch.autograd.functional.jacobian(lambda a: f(a, *rest), first))

def test_fullgraph_compile_on_it():
    torch._dynamo.reset()
    m = reclang.load("specs/mlstm.rec", H=2, K=3, V=2).module("chunk", chunk_size=4).double()
    inputs = random_inputs(m, 2, 7, **MATRIX_TRANSFORMS.get("mlstm", {}))
    state = random_state(m, 2)
    want = run_with_grads(m, m, inputs, state)
    got = run_with_grads(m, torch.compile(m, fullgraph=True, backend="aot_eager"), inputs, state)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=lambda msg, k=k: f"{k}: {msg}")
