"""The chunk backend against the sequential one (float64: outputs, final states and
gradients of inputs, params and initial states), on every catalogue spec it can run,
at awkward lengths around the chunk size; its core algorithm against a plain loop."""

import pytest
import torch
from helpers import (MATRIX_TRANSFORMS, as_reference, assert_matches_reference, cells_on,
                     random_inputs, random_state, small)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import reclang
from reclang.runtime.chunk import _not_finite, chunk_affine
from reclang.errors import RecError
from reclang.schedule import ChunkSchedule

F = torch.nn.functional
TRANSFORMS = MATRIX_TRANSFORMS  # inputs as the papers constrain them
unit = lambda x: F.normalize(x, dim=-1)  # noqa: E731
CHUNK = 8  # small chunks (with sub-chunks of 16 not dividing them) keep the tests fast


def pair(name, chunk=CHUNK, segment=None, **hypers):
    cell = small(name) if not hypers else reclang.load(f"specs/{name}.rec", **hypers)
    torch.manual_seed(0)
    if segment is None:
        chunked = cell.module("chunk", chunk_size=chunk).double()
    else:  # a small segment: the schedule's
        chunked = cell.module("chunk", schedule=ChunkSchedule(chunk, segment)).double()
    sequential = cell.module("sequential").double()
    return chunked, sequential


def test_chunk_runs_the_matrix_cells():
    assert set(cells_on("chunk")) == {
        "gla", "hgrn2", "linear_attn", "mamba2", "mlstm", "retnet", "rwkv6", "simple_gla",
        "delta_net", "gated_delta_net", "delta_product", "rwkv7", "kda",
        "gated_delta_net_layer"}


@pytest.mark.parametrize("T", [1, 2, 7, CHUNK - 1, CHUNK, CHUNK + 1, 129])
@pytest.mark.parametrize("name", cells_on("chunk"))
def test_chunk_matches_sequential(name, T):
    chunked, sequential = pair(name)
    x = random_inputs(chunked, 2, T, **TRANSFORMS.get(name, {}))
    s = random_state(chunked, 2)
    assert_matches_reference(chunked, as_reference(sequential), x, s)


@pytest.mark.parametrize("segment", [1, 16, 20])  # one chunk, two, not a multiple of 8
@pytest.mark.parametrize("name", ["gla", "delta_net", "rwkv7", "retnet"])
def test_segments_of_a_long_sequence_give_the_same_recurrence(name, segment):
    """chunk_affine runs segments of SEGMENT steps (whole chunks) from the state the one
    before ends in; long sequences only reach it by default, so here it is made small."""
    chunked, sequential = pair(name, segment=segment)
    for T in (1, 16, 37):
        x = random_inputs(chunked, 2, T, seed=T, **TRANSFORMS.get(name, {}))
        assert_matches_reference(chunked, as_reference(sequential), x, random_state(chunked, 2))


@pytest.mark.parametrize("name", ["gla", "gated_delta_net", "mamba2"])
def test_default_chunks_and_sub_chunks(name):
    """Chunks of 64 with key-wise sub-chunks of 16; T = 1000 is no multiple of either."""
    chunked, sequential = pair(name, chunk=None, H=2, K=8, V=8) if name != "mamba2" else \
        pair(name, chunk=None, H=2, P=4, N=8)
    for T in (63, 64, 65, 1000):
        x = random_inputs(chunked, 1, T, seed=T, **TRANSFORMS.get(name, {}))
        assert_matches_reference(chunked, as_reference(sequential), x, random_state(chunked, 1),
                                 grads=T == 65)


def test_source_reads_like_the_plan():
    source = small("gla").source("chunk", chunk_size=32)
    assert "chunk_affine(_S_w, None, None, _S_k, _S_v, _S_q" in source
    assert "# log decay: g[h, i]" in source and "chunk=32" in source
    assert "gla.rec:" in source


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 70), chunk=st.sampled_from([1, 3, 16, 32, 48]),
       B=st.integers(1, 3), name=st.sampled_from(["gla", "delta_product", "rwkv7", "mlstm"]))
def test_chunk_sizes_and_shapes(T, chunk, B, name):
    chunked, sequential = pair(name, chunk=chunk)
    x = random_inputs(chunked, B, T, seed=T + chunk, **TRANSFORMS.get(name, {}))
    assert_matches_reference(chunked, as_reference(sequential), x, random_state(chunked, B),
                             grads=False)


def _loop(w, a, b, k, v, q, h0):
    """The recurrence of chunk_affine, one step at a time."""
    h, outs = h0, []
    for t in range(w.shape[1]):
        outs.append(torch.einsum("brhk,bhkv->brhv", q[:, t], h))
        low = torch.einsum("brhk,brhl,bhlv->bhkv", a[:, t], b[:, t], h) if a is not None else 0
        h = torch.exp(w[:, t])[..., None] * h + low + \
            torch.einsum("brhk,brhv->bhkv", k[:, t], v[:, t])
    return torch.stack(outs, 1), h


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 50), chunk=st.sampled_from([1, 4, 16, 32]),
       keywise=st.booleans(), low_rank=st.integers(0, 2), rank=st.integers(1, 3),
       queries=st.integers(1, 2), strong=st.booleans())
def test_chunk_affine_against_a_loop(T, chunk, keywise, low_rank, rank, queries, strong):
    g = torch.Generator().manual_seed(T * 7 + chunk)
    B, H, K, V = 2, 2, 5, 3
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    w = -F.softplus(rand(B, T, H, K if keywise else 1)) * (30 if strong else 1)
    a = rand(B, T, low_rank, H, K) / 3 if low_rank else None
    b = unit(rand(B, T, low_rank, H, K)) if low_rank else None
    k, v = rand(B, T, rank, H, K), rand(B, T, rank, H, V)
    q, h0 = rand(B, T, queries, H, K), rand(B, H, K, V)
    out, h = chunk_affine(w, a, b, k, v, q, h0, chunk=chunk, segment=1024)
    ref_out, ref_h = _loop(w, a, b, k, v, q, h0)
    torch.testing.assert_close(out, ref_out, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(h, ref_h, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gates_near_zero_stay_finite(dtype):
    """Decays of e^-20 per step over T = 4096: within a chunk the cumulative log decay
    reaches -1280, far beyond exp's range, yet nothing overflows (the sub-chunks fall
    back to pairwise exponents) and the result equals the loop's."""
    chunked, sequential = pair("gla", chunk=None, H=2, K=8, V=8)
    x = random_inputs(chunked, 1, 4096, g=lambda g: -20 + g)
    x = {n: t.to(dtype) for n, t in x.items()}
    chunked, sequential = chunked.to(dtype), sequential.to(dtype)
    with torch.no_grad():
        y, s = chunked(**x)
        y_ref, s_ref = sequential(**x)
    assert torch.isfinite(y).all() and torch.isfinite(s["S"]).all()
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)


def test_variable_lengths_on_chunk():
    chunked, sequential = pair("gated_delta_net")
    x = random_inputs(chunked, 3, 20, **TRANSFORMS["gated_delta_net"])
    lengths = torch.tensor([20, 7, 13])
    y, s = chunked(lengths=lengths, **x)
    y_ref, s_ref = sequential(lengths=lengths, **x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(s["S"], s_ref["S"])


def test_chunk_refuses_other_forms_with_the_reason():
    with pytest.raises(RecError, match="chunk.*lstm.rec:.*not affine"):
        reclang.load("specs/lstm.rec").module("chunk")
    with pytest.raises(RecError, match="needs mat-decay or dplr"):
        reclang.load("specs/min_gru.rec").module("chunk")


def test_chunk_refuses_a_readout_of_single_entries():
    cell = reclang.loads("""
cell peek(K = 4, V = 3):
    input k[K], v[V]
    state S[K, V] = 0
    S[i, j] <- 0.5 * S[i, j] + k[i] * v[j]
    out o[j] = sum(i: S[i, j]) + S[0, j]
""")
    verdict = next(v for v in cell.verdicts if v.backend == "chunk")
    assert not verdict.supported
    assert verdict.reason == "<string>:6:9: S is read without contracting its key axis i"


def test_a_decay_along_the_value_axis_becomes_shared():
    """diag(α) S with α along the values: each value column is its own recurrence."""
    cell = reclang.loads("""
cell value_decay(K = 4, V = 3):
    input q[K], k[K], v[V], g[V]
    state S[K, V] = 0
    S[i, j] <- exp(g[j]) * S[i, j] + k[i] * v[j]
    out o[j] = sum(i: q[i] * S[i, j])
""")
    assert cell.plan.form == "mat-decay"
    torch.manual_seed(0)
    chunked = cell.module("chunk", chunk_size=4).double()
    x = random_inputs(chunked, 2, 11, g=F.logsigmoid)
    assert_matches_reference(chunked, as_reference(cell.module("sequential").double()), x,
                             random_state(chunked, 2))


MEMORIES = """
cell memories(H = 2, K = 4, V = 3):
    input q[H, K], k[H, K], v[H, V], u[H, V], f[H], g[H]
    state S[H, K, V] = 0, P[H, K, V] = 0, n[H, K] = 0, m[H, K] = 0
    S[h, a, b] <- sigmoid(f[h]) * S[h, a, b] + exp(g[h]) * k[h, a] * v[h, b]
    P[h, a, b] <- sigmoid(f[h]) * P[h, a, b] + exp(g[h]) * k[h, a] * u[h, b]
    n[h, a] <- sigmoid(f[h]) * n[h, a] + exp(g[h]) * k[h, a]
    m[h, a] <- sigmoid(g[h]) * m[h, a] + exp(g[h]) * k[h, a]
    out o[h, b] = sum(a: q[h, a] * S[h, a, b]) * sum(a: q[h, a] * P[h, a, b])
    out r[h] = sum(a: k[h, a] * n[h, a]) + sum(a: q[h, a] * m[h, a])
"""


def test_states_with_the_same_decay_keys_and_queries_share_one_pass():
    """S and P (same decay, keys and query q) run as one pass with their values side
    by side; n (read with k) and m (another decay) each alone. All equal the loop, with
    the outputs, final states and gradients (initial states too), at T = 1, a prime
    and across chunks of 4, and with variable lengths."""
    cell = reclang.loads(MEMORIES, "memories.rec")
    source = cell.source("chunk", chunk_size=4)
    assert source.count("= chunk_affine(") == 3
    assert "torch.cat([S.reshape(-1, 2, 4, 3), P.reshape(-1, 2, 4, 3)], -1)" in source
    torch.manual_seed(0)
    chunked = cell.module("chunk", chunk_size=4).double()
    reference = as_reference(cell.module("sequential").double())
    for T in (1, 7, 9):
        x = random_inputs(chunked, 2, T, seed=T)
        assert_matches_reference(chunked, reference, x, random_state(chunked, 2))
    x = random_inputs(chunked, 3, 9, seed=1)
    assert_matches_reference(chunked, reference, x, random_state(chunked, 3),
                             varlen={"lengths": torch.tensor([9, 1, 5])})


def test_mlstm_runs_its_state_and_normalizer_in_one_pass():
    source = small("mlstm").source("chunk")
    assert source.count("= chunk_affine(") == 1


def test_a_step_is_non_finite_where_its_sum_is():
    """causal_pass finds the non-finite steps from each step's sum (one pass over the
    operand): a NaN, an inf and an inf - inf make it non-finite; a finite step whose sum
    overflows is flagged too, which costs a second run and still gives the loop's
    result."""
    x = torch.zeros(1, 5, 2, 3, dtype=torch.float64)
    x[0, 1, 0, 0], x[0, 2, 1, 2] = float("nan"), float("inf")
    x[0, 3, 0, 0], x[0, 3, 1, 1] = float("inf"), -float("inf")
    x[0, 4, 0, :2] = 1e308  # finite; the sum is not
    assert _not_finite(x).tolist() == [[False, True, True, True, True]]
    g = torch.Generator().manual_seed(0)
    w = -F.softplus(torch.randn(1, 6, 2, 1, generator=g, dtype=torch.float64))
    k, v = x.new_zeros(1, 6, 1, 2, 3), 1e-300 * torch.randn(1, 6, 1, 2, 2, generator=g,
                                                            dtype=torch.float64)
    k[0, 3, 0, 0, :2] = 1e308
    q, h0 = 1e-300 * torch.randn(1, 6, 1, 2, 3, generator=g, dtype=torch.float64), \
        torch.randn(1, 2, 3, 2, generator=g, dtype=torch.float64)
    out, h = chunk_affine(w, None, None, k, v, q, h0, chunk=4, segment=1024)
    ref_out, ref_h = _loop(w, None, None, k, v, q, h0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_out, atol=0, rtol=1e-9)
    torch.testing.assert_close(h, ref_h, atol=0, rtol=1e-9)


@pytest.mark.parametrize("name", cells_on("chunk"))
def test_auto_picks_chunk_for_matrix_states(name):
    assert small(name).module("auto").backend == "chunk"


class _Written(TorchDispatchMode):
    """Counts the elements of every tensor that the operators run under it create."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(x, torch.Tensor) and not x._is_view():
                self.elements += x.numel()
        return out


def _written_by_backward(module, name, T):
    x = {k: v.requires_grad_() for k, v in
         random_inputs(module, 1, T, **TRANSFORMS.get(name, {})).items()}
    outs, final = module(**x)
    outs = outs if isinstance(outs, dict) else {"out": outs}
    loss = sum(y.abs().sum() for y in [*outs.values(), *final.values()])
    with _Written() as written:
        loss.backward()
    return written.elements


@pytest.mark.parametrize("name", cells_on("chunk"))
def test_backward_work_grows_linearly_in_T(name):
    """Issue 26: the pass from chunk to chunk indexed x[:, n] per chunk, so autograd
    built a gradient of x's full size for every chunk: O(T²) in the backward pass. The
    elements it creates must grow as T (a count, not a timing)."""
    module, _ = pair(name, chunk=4)
    short, long = (_written_by_backward(module, name, T) for T in (64, 256))
    assert long <= 4.2 * short, (short, long, long / short)
