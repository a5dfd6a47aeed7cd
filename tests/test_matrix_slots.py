"""The slots of the matrix-state chunk kernels (reclang/codegen/matrix_slots.py,
backends/templates/mat_slots.py.jinja): which operands the kernels compute from the raw
inputs, that the forward pass then computes none of them in PyTorch, and cells that mix
in-kernel and precomputed operands (a projection, a param) against the sequential
backend in float64 under the interpreter: outputs, final states, gradients of inputs,
params and initial states."""

import re

import pytest
import sympy
import torch
from helpers import (
    MATRIX_TRANSFORMS,
    as_reference,
    assert_matches_reference,
    random_inputs,
    random_state,
    small,
)

import reclang
from reclang.codegen.fused_loop import TritonPrinter

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_a_power_with_a_sum_for_exponent_is_printed_in_parentheses():
    """2 ** (-h - 5) (RetNet's decay) was printed tl.exp(-h - 5.0 * tl.log(2.0))."""
    h = sympy.Symbol("h")
    assert TritonPrinter("x").doprint(2 ** (-h - 5)) == "tl.exp((-h - 5.0) * tl.log(2.0))"


@pytest.mark.parametrize("name, precomputed", [
    ("gla", "none precomputed"), ("simple_gla", "none precomputed"),
    ("retnet", "none precomputed"), ("delta_net", "none precomputed"),
    # an exp of an input can overflow from finite inputs: precomputed, where causal_pass
    # checks it (Gated DeltaNet's a = -exp(g) β k)
    ("gated_delta_net", "precomputed on all tokens (not elementwise in the inputs, or able "
                        "to overflow from finite ones): S: a."),
    ("mamba2", "precomputed on all tokens (not elementwise in the inputs, or able to "
               "overflow from finite ones): S: w, k.")])
def test_the_header_names_the_precomputed_operands(name, precomputed):
    header = " ".join(line[2:] for line in small(name).source("triton").splitlines()
                      if line.startswith("# "))
    assert "The chunk kernels compute the operands from the raw inputs" in header
    assert precomputed in header


@pytest.mark.parametrize("name, precomputed", [("gla", 0), ("gated_delta_net", 1)])
def test_the_forward_computes_no_in_kernel_operand_in_pytorch(name, precomputed, monkeypatch):
    """Every PyTorch operand of the forward pass is a precomputed one or an output's
    linear part: GLA's w, k, v, q and Gated DeltaNet's w, k, v, q, b are the kernels'
    (its a = -exp(g) β k is precomputed: an exp can overflow)."""
    m = small(name).module("triton").double().to(DEVICE)
    code = m._generated
    made = []
    real = code.operand
    monkeypatch.setattr(code, "operand", lambda x, like, shape: made.append(shape) or
                        real(x, like, shape))
    x = random_inputs(m, 1, 5, **MATRIX_TRANSFORMS[name])
    with torch.no_grad():
        m(**{k: v.to(DEVICE) for k, v in x.items()})
    H, K, V = (small(name).hypers[n] for n in "HKV")
    assert made == [(H, K)] * precomputed + [(H, V)]  # a, and the output's linear part


# key side through a projection and a param in the decay: both precomputed; the value
# side and the query in the kernels; two states, the second one on the kernels' STATE 1
MIXED = """cell mixed(H = 2, K = 16, V = 16, D = 3):
    input q[H, K], x[D], v[H, V], g[H, K], f[H]
    param W[H, K, D] ~ normal(0, 0.3)
    param p[H] ~ normal(0, 0.5)
    state S[H, K, V] = 0
    state Z[H, K, V] = 0
    S[h, i, j] <- exp(g[h, i]) * S[h, i, j] + sum(d: W[h, i, d] * x[d]) * v[h, j]
    Z[h, i, j] <- exp(-softplus(f[h] + p[h])) * Z[h, i, j] + g[h, i] * tanh(v[h, j])
    out o[h, j] = sum(i: q[h, i] * S[h, i, j]) + sum(i: sigmoid(q[h, i]) * Z[h, i, j])
"""


@pytest.mark.parametrize("T", [1, 5, 37])
def test_in_kernel_and_precomputed_operands_against_sequential(T):
    cell = reclang.loads(MIXED, "mixed.rec")
    source = cell.source("triton")
    assert "S: k" in source and "Z: w" in source  # the projection, the param
    torch.manual_seed(0)
    triton_ = cell.module("triton").double().to(DEVICE)
    sequential = cell.module("sequential").double().to(DEVICE)
    x = random_inputs(triton_, 2, T, g=lambda g: torch.nn.functional.logsigmoid(g) / 4)
    x = {k: v.to(DEVICE) for k, v in x.items()}
    for state in ({k: v.to(DEVICE) for k, v in random_state(triton_, 2).items()}, None):
        assert_matches_reference(triton_, as_reference(sequential), x, state, atol=1e-9,
                                 rtol=1e-7)


@pytest.mark.parametrize("name, bonus", [("gla", False), ("delta_net", False),
                                         ("rwkv7", False), ("rwkv6", True)])
def test_a_readout_of_the_new_state_has_no_bonus_term(name, bonus):
    """o = q·S of the updated S is read through the kernels' inclusive mask: no q·k v
    term in the epilogue (it would read the keys k). RWKV-6 reads the previous state and
    adds its own u term."""
    source = small(name).source("triton")
    forward = source[source.index("\ndef forward("):source.index("\ndef step(")]
    epilogue = forward.split("= state_pass_slots(")[1].split("\n", 1)[1]
    assert bool(re.search(r"\bk\b", epilogue)) == bonus
    assert ("inclusive=True" in source.split("_S_slots = Slots(")[1].split("\n")[0]) != bonus


@pytest.mark.parametrize("name", ["gla", "gated_delta_net", "mixed"])
@pytest.mark.parametrize("packed", [False, True])
def test_slots_over_several_chunks_and_packed_sequences(name, packed):
    """Chunks of 16 steps: T = 37 crosses two chunk boundaries and ends in a short one;
    packed, sequences of 3, 17 and 17 steps. Key-wise and scalar decays, a delta rule,
    precomputed operands."""
    cell = reclang.loads(MIXED, "mixed.rec") if name == "mixed" else small(name)
    torch.manual_seed(0)
    triton_ = cell.module("triton", chunk_size=16).double().to(DEVICE)
    sequential = cell.module("sequential").double().to(DEVICE)
    sequential.load_state_dict(triton_.state_dict())
    transforms = MATRIX_TRANSFORMS.get(name, {"g": lambda g: torch.nn.functional.logsigmoid(g)})
    B = 1 if packed else 2
    x = {k: v.to(DEVICE) for k, v in random_inputs(triton_, B, 37, **transforms).items()}
    s0 = {k: v.to(DEVICE) for k, v in random_state(triton_, 3 if packed else 2).items()}
    varlen = {"cu_seqlens": torch.tensor([0, 3, 20, 37], device=DEVICE)} if packed else None
    assert_matches_reference(triton_, as_reference(sequential), x, s0, atol=1e-9, rtol=1e-7,
                             **({"varlen": varlen} if packed else {}))


def test_a_decay_not_proven_positive_is_precomputed_and_checked():
    """Its log is checked for NaN (check_log_decay) on all tokens before the kernels."""
    cell = reclang.loads("""cell unproven(H = 2, K = 16, V = 16):
    input q[H, K], k[H, K], v[H, V], a[H]
    state S[H, K, V] = 0
    S[h, i, j] <- a[h] * S[h, i, j] + k[h, i] * v[h, j]
    out o[h, j] = sum(i: q[h, i] * S[h, i, j])
""", "unproven.rec")
    source = cell.source("triton")
    assert "S: w." in source and 'check_log_decay(_S_w, "S")' in source
    m = cell.module("triton").double().to(DEVICE)
    x = {k: v.to(DEVICE) for k, v in random_inputs(m, 1, 5, a=lambda a: -a.abs()).items()}
    with pytest.raises(ValueError, match="the decay of S is not positive"):
        m(**x)


def test_a_where_of_numbers_in_a_slot():
    """A key side where(k > 0, 1, -1): the printer's tile of numbers (`zero`) exists."""
    cell = reclang.loads("""cell signs(H = 2, K = 16, V = 16):
    input q[H, K], k[H, K], v[H, V], g[H, K]
    state S[H, K, V] = 0
    S[h, i, j] <- exp(g[h, i]) * S[h, i, j] + where(k[h, i] > 0, 1, -1) * v[h, j]
    out o[h, j] = sum(i: q[h, i] * S[h, i, j])
""", "signs.rec")
    assert "zero = tl.zeros(mask.shape, dtype)" in cell.source("triton")
    torch.manual_seed(0)
    triton_ = cell.module("triton").double().to(DEVICE)
    sequential = cell.module("sequential").double().to(DEVICE)
    x = random_inputs(triton_, 2, 5, g=lambda g: torch.nn.functional.logsigmoid(g))
    assert_matches_reference(triton_, as_reference(sequential),
                             {k: v.to(DEVICE) for k, v in x.items()}, None, atol=1e-9,
                             rtol=1e-7)
