"""The triton backend against the sequential one, run by Triton's interpreter on the
CPU when there is no GPU (TRITON_INTERPRET=1, set in conftest.py): float64 outputs,
final states and gradients of inputs, params and initial states, at awkward lengths;
its matrix-state kernel against a loop written here; the generated file; the refusals."""

import os

import pytest
import torch
from helpers import (MATRIX_TRANSFORMS, SPECS, as_reference, assert_matches_reference, cells_on,
                     every_variant,
                     random_inputs, random_state, small, unit)
from hypothesis import given, settings
from hypothesis import strategies as st

import reclang

F = torch.nn.functional
# on a machine with a GPU the kernels run there; elsewhere under the interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def on_device(tensors: dict) -> dict:
    return {k: v.to(DEVICE) for k, v in tensors.items()}
TRANSFORMS = {"g": F.logsigmoid}  # hgrn's gate is a log decay
CELLS = cells_on("triton")
MATRIX = [name for name in CELLS if small(name).plan.form in ("mat-decay", "dplr")]
NONLINEAR = [name for name in CELLS if small(name).plan.form == "nonlinear"]
DIAGONAL = [name for name in CELLS if name not in MATRIX + NONLINEAR]


def test_triton_runs_the_diagonal_matrix_state_and_nonlinear_cells():
    assert set(DIAGONAL) == {"hgrn", "lru", "lsrl_parity", "mamba_s6", "min_gru",
                             "min_lstm", "rg_lru", "s4d", "qrnn", "mamba_block"}
    assert set(MATRIX) == {"gla", "hgrn2", "linear_attn", "mamba2", "mlstm", "retnet",
                           "rwkv6", "simple_gla",                                # mat-decay
                           "delta_net", "delta_product", "gated_delta_net", "rwkv7", "kda",
                           "gated_delta_net_layer"}  # dplr
    odyssey = {f"lstm_odyssey_{v}" for v in ("cifg", "fgr", "nfg", "niaf", "nig", "noaf",
                                             "nog", "np", "vanilla")}
    assert set(NONLINEAR) == {"elman", "gru", "lstm", "rwkv4", "slstm", "para_gru", "para_lstm",
                              "indrnn"} | odyssey


# the interpreter runs the kernels' steps in Python, slowly: lengths stay short here.
# The diagonal scan walks time in tiles of 64 steps (64, 65 cross a tile); the matrix
# kernel step by step (T = 1: no step before the readout; 7, 33: primes); so does the
# fused loop of the nonlinear cells (33 for a few: the interpreter is slowest there).
CASES = [(name, T) for name in DIAGONAL for T in (1, 2, 7, 64, 65)] + \
    [(name, T) for name in MATRIX for T in (1, 7, 33)] + \
    [(name, T) for name in NONLINEAR for T in (1, 7)] + \
    [(name, 33) for name in ("elman", "gru", "lstm")]


# padding channels of the gated scan compute what they like (0 / 0 included) and are masked
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name, T", CASES)
def test_triton_matches_sequential(name, T):
    cell = small(name)
    torch.manual_seed(0)
    triton_ = cell.module("triton").double().to(DEVICE)
    sequential = cell.module("sequential").double().to(DEVICE)
    x = on_device(random_inputs(triton_, 2, T, **MATRIX_TRANSFORMS.get(name, TRANSFORMS)))
    for state in (on_device(random_state(triton_, 2)), None):
        assert_matches_reference(triton_, as_reference(sequential), x, state, atol=1e-9,
                                 rtol=1e-7)


def loop_reference(w, a, b, k, v, q, s0):
    """S_t = (diag(exp(w_t)) + Σ_r a_{t,r} b_{t,r}ᵀ) S_{t-1} + Σ_r k_{t,r} v_{t,r}ᵀ,
    o_{t,r} = S_{t-1}ᵀ q_{t,r}: the matrix kernel's recurrence, step by step."""
    s, outs = s0, []
    for t in range(k.shape[1]):
        outs.append(torch.einsum("brhk,bhkv->brhv", q[:, t], s))
        decay = torch.exp(w[:, t])[..., None]            # [B, H, 1 or K, 1]
        low_rank = torch.einsum("brhk,brhj,bhjv->bhkv", a[:, t], b[:, t], s)
        s = decay * s + low_rank + torch.einsum("brhk,brhv->bhkv", k[:, t], v[:, t])
    if not outs:  # an empty sequence
        return q.new_zeros((*q.shape[:-1], v.shape[-1])), s
    return torch.stack(outs, 1), s


@pytest.mark.parametrize("keywise, rank", [(True, 0), (False, 0), (True, 2)])
def test_matrix_kernel_with_ranks_and_tiles_matches_a_loop(keywise, rank):
    """Two input terms and three readouts per step, V over two tiles (the launcher adds
    the tiles' partial sums), K over two tiles without a low-rank part (rank 0) and one
    with it (rank 2), scalar and key-wise decays: outputs, final state and all
    gradients against the loop above."""
    state_pass = every_variant(small("gla")).state_pass  # the generated file's
    torch.manual_seed(0)
    B, T, H, K, V = 2, 9, 2, 130, 40
    w = -torch.rand(B, T, H, K if keywise else 1, dtype=torch.float64)
    # a bᵀ of norm ~0.5: the transition stays a contraction, as for the delta rule
    a, b = (torch.randn(B, T, rank, H, K, dtype=torch.float64) / K ** 0.5 for _ in "ab")
    k, q = (torch.randn(B, T, R, H, K, dtype=torch.float64) for R in (2, 3))
    v = torch.randn(B, T, 2, H, V, dtype=torch.float64)
    s0 = torch.randn(B, H, K, V, dtype=torch.float64)
    leaves = [x.to(DEVICE).requires_grad_() for x in (w, a, b, k, v, q, s0)]
    refs = [x.detach().clone().requires_grad_() for x in leaves]
    low_rank = leaves[1:3] if rank else (None, None)
    o, last = state_pass(leaves[0], *low_rank, *leaves[3:])
    o_ref, last_ref = loop_reference(*refs)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(last, last_ref)
    go, glast = torch.randn_like(o), torch.randn_like(last)
    torch.autograd.backward((o, last), (go, glast))
    torch.autograd.backward((o_ref, last_ref), (go, glast))
    for name, ours, theirs in zip("w a b k v q s0".split(), leaves, refs):
        if rank or name not in "ab":
            torch.testing.assert_close(ours.grad, theirs.grad,
                                       msg=lambda m, n=name: f"{n}: {m}")


@settings(max_examples=12, deadline=None)
@given(T=st.integers(1, 9), heads=st.integers(1, 2), K=st.sampled_from([1, 3, 17]),
       V=st.sampled_from([1, 2, 33]), rank=st.integers(1, 2), queries=st.integers(0, 2),
       low_rank=st.integers(0, 2), keywise=st.booleans(), cuts=st.lists(
           st.integers(1, 8), max_size=3), seed=st.integers(0, 2**16))
def test_matrix_kernel_over_shapes_and_packings(T, heads, K, V, rank, queries, low_rank,
                                                keywise, cuts, seed):
    """Any sizes (V = 33 spans two tiles), ranks, readouts, low-rank parts, decays, and
    sequences packed at random cut points (cu_seqlens) or a batch of two: outputs, final
    states and gradients against the loop above, run sequence by sequence."""
    state_pass = every_variant(small("gla")).state_pass
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    cu = sorted({0, T, *[c for c in cuts if c < T]}) if cuts else None
    B = 1 if cu else 2
    w = -torch.rand(B, T, heads, K if keywise else 1, generator=g, dtype=torch.float64)
    a, b = (rand(B, T, low_rank, heads, K) / (K + 1) for _ in "ab")
    k, v = rand(B, T, rank, heads, K), rand(B, T, rank, heads, V)
    q, s0 = rand(B, T, queries, heads, K), rand(len(cu) - 1 if cu else B, heads, K, V)
    check_state_pass(state_pass, (w, a, b, k, v, q, s0), cu)


def check_state_pass(state_pass, tensors, cu=None):
    """state_pass on (w, a, b, k, v, q, s0) (a, b of rank 0: no low-rank part) against
    the loop above, run sequence by sequence for sequences packed at `cu`: outputs,
    final states and the gradients of all seven."""
    leaves = [x.to(DEVICE).requires_grad_() for x in tensors]
    refs = [x.detach().clone().requires_grad_() for x in leaves]
    low_rank = leaves[1].shape[2] > 0
    low = leaves[1:3] if low_rank else (None, None)
    o, last = state_pass(leaves[0], *low, *leaves[3:6], leaves[6],
                         cu_seqlens=None if cu is None else torch.tensor(cu))
    if cu is None:
        o_ref, last_ref = loop_reference(*refs)
    else:  # each packed sequence alone, from its own initial state
        parts = [loop_reference(*(x[:, s:e] for x in refs[:6]), refs[6][n:n + 1])
                 for n, (s, e) in enumerate(zip(cu[:-1], cu[1:]))]
        o_ref = torch.cat([p[0] for p in parts], 1)
        last_ref = torch.cat([p[1] for p in parts], 0)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(last, last_ref)
    go, glast = torch.randn_like(o), torch.randn_like(last)
    torch.autograd.backward((o, last), (go, glast))
    torch.autograd.backward((o_ref, last_ref), (go, glast))
    for name, ours, theirs in zip("w a b k v q s0".split(), leaves, refs):
        if low_rank or name not in "ab":
            torch.testing.assert_close(ours.grad, theirs.grad,
                                       msg=lambda m, n=name: f"{n}: {m}")


@settings(max_examples=12, deadline=None)
@given(T=st.integers(1, 50), chunk=st.sampled_from([16, 32]), heads=st.integers(1, 2),
       K=st.sampled_from([1, 17, 40, 70]), V=st.sampled_from([1, 33, 70]),
       decay=st.sampled_from(["key-wise", "scalar", "key-wise, low-rank",
                              "scalar, low-rank"]),
       cuts=st.lists(st.integers(0, 49), max_size=3), seed=st.integers(0, 2**16))
def test_chunk_kernels_over_shapes_chunks_and_packings(T, chunk, heads, K, V, decay, cuts,
                                                       seed):
    """The chunk kernels (one input term, one readout, a low-rank part of rank 1 at
    most: mat-decay cells and the delta rules but DeltaProduct's) at chunks of 16 and
    32 steps: several chunks and key-wise sub-chunks, a last
    chunk cut short, keys and values over several tiles (the kernels' tiles are 16 to
    64 wide: K = 17, 40, 70 and V = 33, 70 cross them), sequences packed at random cuts
    (empty ones too) or a batch of two."""
    code = every_variant(small("gla"), chunk)
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    cu = sorted([0, T, *[c for c in cuts if c < T]]) if cuts else None
    B = 1 if cu else 2
    w = -torch.rand(B, T, heads, K if decay.startswith("key-wise") else 1, generator=g,
                    dtype=torch.float64)
    # a bᵀ of norm ~0.5 (a contraction, as for the delta rule)
    a, b = (rand(B, T, int(decay.endswith("low-rank")), heads, K) / (K + 1) for _ in "ab")
    k, v, q = rand(B, T, 1, heads, K), rand(B, T, 1, heads, V), rand(B, T, 1, heads, K)
    assert code._launcher(a, k, q) is code._launch_chunk
    check_state_pass(code.state_pass, (w, a, b, k, v, q,
                                       rand(len(cu) - 1 if cu else B, heads, K, V)), cu)


@pytest.mark.parametrize("low, high", [(0.0, 2.0), (1.9, 2.0)])
def test_chunk_delta_rule_with_beta_near_two_in_float32(low, high):
    """DeltaNet with β up to 2 (I - β k kᵀ reflects: eigenvalue -1) over T = 300 in
    float32, against sequential in float64: the WY form's (I - L)⁻¹ within a chunk is
    taken by forward substitution. (Its series by repeated squaring, Π (I + L^(2^k)),
    lost every digit here: outputs 1e17 off.)"""
    cell = small("delta_net")
    torch.manual_seed(0)
    triton_ = cell.module("triton").to(DEVICE)
    sequential = cell.module("sequential").double().to(DEVICE)
    sequential.load_state_dict(triton_.state_dict())
    x = on_device(random_inputs(triton_, 2, 300, k=unit,
                                beta=lambda b: low + (high - low) * torch.sigmoid(b)))
    y, state = triton_(**{k: v.float() for k, v in x.items()})
    y_ref, state_ref = sequential(**x)
    # relative to the largest value: reflections keep float32's rounding from decaying
    error = lambda a, b: ((a.double() - b).abs().max() / b.abs().max()).item()  # noqa: E731
    assert error(y, y_ref) < 1e-4 and error(state["S"], state_ref["S"]) < 1e-4


@pytest.mark.parametrize("keywise", [False, True])
def test_chunk_kernels_with_decays_that_vanish(keywise):
    """Log decays of -30 to -60 a step in float32: the decay across a chunk of 32 steps
    underflows to 0 and nothing in the kernels overflows (no exp of a cumulative sum).
    The exponents are differences of sums within a chunk (up to ~2000 here), so they
    carry float32's rounding of those sums: ~1e-4, relative, in the outputs."""
    code = every_variant(small("gla"), 32)
    torch.manual_seed(0)
    B, T, H, K, V = 1, 70, 1, 16, 16
    w = -30 - 30 * torch.rand(B, T, H, K if keywise else 1)
    k, v, q = (torch.randn(B, T, 1, H, n) for n in (K, V, K))
    s0 = torch.randn(B, H, K, V)
    none = k[:, :, :0]
    o, last = code.state_pass(*(x.to(DEVICE) for x in (w, none, none, k, v, q, s0)))
    o_ref, last_ref = loop_reference(w.double(), *(x.double() for x in (none, none, k, v, q,
                                                                        s0)))
    assert torch.isfinite(o).all() and torch.isfinite(last).all()
    torch.testing.assert_close(o.double().cpu(), o_ref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(last.double().cpu(), last_ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", ["min_gru", "lru", "gla", "gated_delta_net", "lstm"])
def test_triton_long_sequence_in_float32(name):
    """T = 300 in float32 (real, complex and matrix states, a delta rule, the fused
    loop), against sequential in float64."""
    cell = small(name)
    torch.manual_seed(0)
    triton_ = cell.module("triton").to(DEVICE)
    sequential = cell.module("sequential").double().to(DEVICE)
    sequential.load_state_dict(triton_.state_dict())
    x = on_device(random_inputs(triton_, 3, 300, **MATRIX_TRANSFORMS.get(name, TRANSFORMS)))
    y, state = triton_(**{k: v.float() for k, v in x.items()})
    y_ref, state_ref = sequential(**x)
    torch.testing.assert_close(y, y_ref.to(y.dtype), atol=1e-4, rtol=1e-4)
    for k in state:
        torch.testing.assert_close(state[k], state_ref[k].to(state[k].dtype),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["min_gru", "lru", "gla", "gated_delta_net", "lstm"])
@pytest.mark.parametrize("dtype, bound", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_triton_low_precision_inputs_against_float64(name, dtype, bound):
    """bf16/fp16 inputs: the carry stays float32 (complex64), the outputs are within the
    output dtype's rounding of a float64 run on the same rounded inputs."""
    cell = small(name)
    torch.manual_seed(0)
    triton_ = cell.module("triton").to(DEVICE)
    sequential = cell.module("sequential").double().to(DEVICE)
    sequential.load_state_dict(triton_.state_dict())
    x = random_inputs(triton_, 2, 65, **MATRIX_TRANSFORMS.get(name, TRANSFORMS))
    x = {k: v.to(dtype) for k, v in on_device(x).items()}
    y, state = triton_(**x)
    y_ref, state_ref = sequential(**{k: v.double() for k, v in x.items()})
    assert y.dtype == dtype and all(s.dtype in (torch.float32, torch.complex64)
                                    for s in state.values())
    rms = lambda a, b: ((a.to(b.dtype) - b).abs().pow(2).mean() /  # noqa: E731
                        b.abs().pow(2).mean()).sqrt().item()
    assert rms(y, y_ref) < bound
    assert all(rms(state[k], state_ref[k]) < 1e-5 for k in state)


def test_triton_variable_lengths():
    cell = small("min_gru")
    torch.manual_seed(0)
    triton_ = cell.module("triton").double().to(DEVICE)
    sequential = cell.module("sequential").double().to(DEVICE)
    sequential.load_state_dict(triton_.state_dict())
    x = on_device(random_inputs(triton_, 1, 12))
    cu = torch.tensor([0, 5, 6, 12], device=DEVICE)
    y, final = triton_(cu_seqlens=cu, **x)
    y_ref, final_ref = sequential(cu_seqlens=cu, **x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(final["h"], final_ref["h"])


@pytest.mark.parametrize("name", ["gla", "gated_delta_net"])
def test_matrix_kernel_runs_packed_sequences_in_one_launch(name):
    """cu_seqlens with four different lengths: one kernel launch per state (not one per
    length), equal to the sequential backend run sequence by sequence, with gradients
    of inputs, params and the initial states (the log decay's gradient sums within
    each sequence)."""
    cell = small(name)
    torch.manual_seed(0)
    triton_ = cell.module("triton").double().to(DEVICE)
    sequential = cell.module("sequential").double().to(DEVICE)
    sequential.load_state_dict(triton_.state_dict())
    calls = []
    code = triton_._generated
    # the state's pass: with its operands in the kernels (slots) or precomputed
    passes = {n: getattr(code, n) for n in ("state_pass", "state_pass_slots") if hasattr(code, n)}
    for n, launch in passes.items():
        setattr(code, n, lambda *args, launch=launch, **kw: calls.append(1) or
                launch(*args, **kw))
    cu = torch.tensor([0, 3, 4, 11, 16], device=DEVICE)
    x = on_device(random_inputs(triton_, 1, 16, **MATRIX_TRANSFORMS[name]))
    s0 = on_device(random_state(triton_, 4))
    try:
        assert_matches_reference(triton_, as_reference(sequential), x, s0,
                                 varlen=dict(cu_seqlens=cu))
    finally:
        for n, launch in passes.items():
            setattr(code, n, launch)
    assert len(calls) == 1  # one state, one launch for the four sequences


def test_fused_loop_is_torch_lstm_across_batch_blocks_and_odd_sizes():
    """lstm.rec, whose gates are torch.nn.LSTM's, on the fused loop against torch itself:
    18 sequences (two programs of 16), 5 units (a tile of 16), outputs, final states and
    the gradients of the input, the weights and the initial states."""
    B, T, D, N = 18, 6, 3, 5
    torch.manual_seed(0)
    m = reclang.load(SPECS / "lstm.rec", D=D, N=N).module("triton").double().to(DEVICE)
    x = torch.randn(B, T, D, dtype=torch.float64, device=DEVICE, requires_grad=True)
    h0, c0 = (torch.randn(B, N, dtype=torch.float64, device=DEVICE, requires_grad=True)
              for _ in "hc")
    y, final = m(x=x, state={"h": h0, "c": c0})
    rnn = torch.nn.LSTM(D, N, batch_first=True).double().to(DEVICE)
    weights = {"weight_ih_l0": m.W.reshape(4 * N, D), "weight_hh_l0": m.U.reshape(4 * N, N),
               "bias_ih_l0": m.b.reshape(4 * N), "bias_hh_l0": torch.zeros_like(m.b).flatten()}
    want, (h, c) = torch.func.functional_call(rnn, weights, (x, (h0[None], c0[None])))
    for got, ref in ((y, want), (final["h"], h[0]), (final["c"], c[0])):
        torch.testing.assert_close(got, ref)
    seeds = [torch.randn_like(t) for t in (y, final["h"], final["c"])]
    inputs = (x, h0, c0, m.W, m.U, m.b)
    grads = torch.autograd.grad(sum((t * g).sum() for t, g in zip((y, final["h"], final["c"]),
                                                                     seeds)), inputs)
    expected = torch.autograd.grad(sum((t * g).sum() for t, g in zip((want, h[0], c[0]),
                                                                        seeds)), inputs)
    for got, ref in zip(grads, expected):
        torch.testing.assert_close(got, ref)


def test_fused_loop_with_a_large_padded_head():
    """130 units: a tile of 256 units, the products over 9 slices of 16 keys (the last
    one mostly padding)."""
    torch.manual_seed(0)
    cell = reclang.load(SPECS / "gru.rec", D=3, N=130)
    triton_ = cell.module("triton").double().to(DEVICE)
    sequential = cell.module("sequential").double().to(DEVICE)
    assert_matches_reference(triton_, as_reference(sequential),
                             on_device(random_inputs(triton_, 2, 3)),
                             on_device(random_state(triton_, 2)), atol=1e-9, rtol=1e-7)


def test_fused_loop_with_heads():
    """slstm with 3 heads of 5 units and 17 sequences against sequential."""
    torch.manual_seed(0)
    cell = reclang.load(SPECS / "slstm.rec", D=4, NH=3, DH=5)
    triton_ = cell.module("triton").double().to(DEVICE)
    sequential = cell.module("sequential").double().to(DEVICE)
    x = on_device(random_inputs(triton_, 17, 4))
    assert_matches_reference(triton_, as_reference(sequential), x,
                             on_device(random_state(triton_, 17)), atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name", ["lstm", "slstm"])
def test_fused_loop_runs_packed_sequences_in_one_launch(name):
    """cu_seqlens with four different lengths: aligned to end together in one launch,
    the states of the shorter ones held before their starts, against sequential sequence
    by sequence, with the gradients of inputs, params and the initial states; then
    `lengths` (a right-padded batch), also in one launch."""
    cell = small(name)
    torch.manual_seed(0)
    triton_ = cell.module("triton").double().to(DEVICE)
    sequential = cell.module("sequential").double().to(DEVICE)
    calls = []
    code = triton_._generated
    launch = code.fused_loop
    code.fused_loop = lambda *args, **kw: calls.append(1) or launch(*args, **kw)
    cu = torch.tensor([0, 3, 4, 11, 16], device=DEVICE)
    try:
        assert_matches_reference(triton_, as_reference(sequential),
                                 on_device(random_inputs(triton_, 1, 16)),
                                 on_device(random_state(triton_, 4)), varlen=dict(cu_seqlens=cu))
        assert len(calls) == 1
        # a right-padded batch is packed end to end: one launch too
        lengths = torch.tensor([3, 1, 7, 5], device=DEVICE)
        assert_matches_reference(triton_, as_reference(sequential),
                                 on_device(random_inputs(triton_, 4, 7)),
                                 on_device(random_state(triton_, 4)), varlen=dict(lengths=lengths))
        assert len(calls) == 2
    finally:
        code.fused_loop = launch


def test_fused_loop_refuses_sizes_past_its_32_bit_offsets():
    """Sizes on the meta device (no memory): a long batch is fine until a tensor the
    kernel walks reaches 2³¹ elements."""
    check = small("lstm").module("triton")._generated.check_offsets
    T, gates, B, N = 4096, 4, 64, 256
    ops, w = (torch.empty(s, device="meta") for s in ((T, gates, B, 1, N), (4, 1, N, N)))
    check(ops, w, torch.empty((2, B, 1, N), device="meta"))  # 2.7e8: runs
    with pytest.raises(ValueError, match="32-bit offsets"):  # 8 B: 2³¹ operand values
        check(torch.empty((T, gates, 8 * B, 1, N), device="meta"), w,
              torch.empty((2, 8 * B, 1, N), device="meta"))


def test_generated_file_holds_the_kernel_with_a_header():
    source = small("lru").source("triton")
    lines = source.splitlines()
    assert lines[0].startswith("# Generated by reclang 0.1.0 from lru.rec: cell lru(")
    assert lines[1].startswith("# Spec sha256 ") and "plan: diag-lti" in lines[1]
    assert "@triton.jit\ndef lru_scan_kernel(" in source
    assert "BACKWARD: tl.constexpr, COMPLEX: tl.constexpr" in source  # flags, not copies
    assert source == small("lru").source("triton")  # deterministic
    m = small("lru").module("triton")
    assert m.source == source
    matrix = small("gated_delta_net").source("triton")
    assert matrix.splitlines()[1].startswith("# Spec sha256 ") and "plan: dplr" in matrix
    # the kernels the plan calls, chosen when the file is rendered: the chunk kernels
    # here (one input term, one readout, rank 1), the recurrent one for DeltaProduct's rank 2
    assert "_recurrent_kernel(" not in matrix
    product = small("delta_product").source("triton")
    assert "@triton.jit\ndef delta_product_recurrent_kernel(" in product
    assert "REVERSE: tl.constexpr, R_UPDATE: tl.constexpr" in product  # flags, not copies
    assert "_chunk_" not in product
    # every operand in the kernels' slots, from the raw inputs, but a = -exp(g) β k, which
    # can overflow from finite inputs (precomputed, where causal_pass checks it)
    assert "= state_pass_slots(_S_slots, (q, k, v, g, beta,), (None, _S_a, None, None, None, " \
        "None), " in matrix
    for kernel in ("chunk_wy", "chunk_wy_states", "chunk_read_k", "chunk_read_v"):
        assert f"@triton.jit\ndef gated_delta_net_{kernel}_kernel(" in matrix
    assert "KEYWISE: tl.constexpr, STATE: tl.constexpr,\n        RAW: tl.constexpr, " \
        "FEED: tl.constexpr" in matrix  # flags, not copies
    assert "CHUNK = 64  # steps per chunk" in matrix
    assert "CHUNK = 32  # steps per chunk" in small("gla").source("triton", chunk_size=32)
    fused = small("lstm").source("triton")
    assert fused.splitlines()[1].startswith("# Spec sha256 ") and "plan: nonlinear" in fused
    assert "@triton.jit\ndef lstm_forward_kernel(" in fused
    assert "@triton.jit\ndef lstm_backward_kernel(" in fused
    # the step's equations under the spec lines they come from, in the spec's order
    step = fused[fused.index("# lstm.rec:15: c[n] <- sigmoid(z[1, n]) * c[n]"):]
    assert step.index("# lstm.rec:16: h[n] <-") < step.index("new_c = ")
    assert fused == small("lstm").source("triton")


@pytest.mark.parametrize("name", ["min_gru", "gla", "lstm"])  # the three kernel families
def test_outside_the_interpreter_cpu_tensors_get_a_clear_error(monkeypatch, name):
    m = small(name).module("triton")
    x = random_inputs(m, 1, 3)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="the triton backend runs on CUDA tensors"):
        m(**{k: v.float() for k, v in x.items()})


def test_refusals_name_the_reason():
    with pytest.raises(reclang.RecError, match="backend 'triton' cannot run cell aaren: "
                                                "needs diag or .* not affine in m"):
        small("aaren").module("triton")
    with pytest.raises(reclang.RecError, match="lmu.rec: the fused kernel needs states of "
                                                "one shape"):
        small("lmu").module("triton")
    with pytest.raises(reclang.RecError, match="chunk_size=24: the triton backend's chunk "
                                                "kernels take a power of 2 of at least 16"):
        small("gla").module("triton", chunk_size=24)


def test_auto_prefers_triton_on_cuda_tensors():
    m = small("min_gru").module("auto")
    assert (m.backend, m.backend_for("cpu"), m.backend_for("cuda")) == ("scan", "scan", "triton")
    assert small("gla").module("auto").backend_for("cuda") == "triton"
    assert small("delta_net").module("auto").backend_for("cuda") == "triton"
    lstm = small("lstm").module("auto")
    assert (lstm.backend_for("cpu"), lstm.backend_for("cuda")) == ("sequential", "triton")


def test_auto_states_why_it_does_not_use_triton():
    assert small("min_gru").auto_summary() == "scan on CPU tensors, triton on CUDA tensors"
    assert small("lmu").auto_summary().startswith(
        "sequential on CPU tensors, sequential on CUDA tensors (not triton: lmu.rec: the "
        "fused kernel needs states of one shape")


def test_the_tests_ran_the_kernel_somewhere():
    """Under CI there is no GPU: the interpreter must be on, or nothing above ran a
    kernel."""
    assert torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
