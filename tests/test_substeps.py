"""A state updated in sub-steps (a for block): each sub-step is composed into the
update with its vectors named (analysis/substeps.py), so DeltaProduct's form and
generated code no longer double with each Householder step; outputs and gradients stay
those of the sequential backend (float64)."""

import pytest
import torch
from helpers import SPECS, as_reference, assert_matches_reference, random_inputs, random_state, unit

import reclang

F = torch.nn.functional
SIZES = {"H": 2, "K": 4, "V": 3}
GATES = {"k": unit, "beta": lambda b: 2 * torch.sigmoid(b), "g": F.logsigmoid}

# a gated DeltaProduct: each sub-step decays the state along the key axis first, so the
# composed right vectors carry the decays of the sub-steps before theirs
GATED = """
cell gated_product(H = 2, K = 4, V = 3, NH = 3):
    input q[H, K], k[H, NH, K], v[H, NH, V], beta[H, NH], g[H, NH, K]
    state S[H, K, V] = 0
    for r in NH:
        S[h, i, j] <- exp(g[h, r, i]) * S[h, i, j] + beta[h, r] * k[h, r, i]
                      * (v[h, r, j] - sum(l: k[h, r, l] * exp(g[h, r, l]) * S[h, l, j]))
    out o[h, j] = sum(i: q[h, i] * S[h, i, j])
"""


def _product(NH: int):
    return reclang.load(SPECS / "delta_product.rec", NH=NH, **SIZES)


def test_delta_product_source_grows_linearly_with_the_sub_steps():
    # before: 3.9, 17.6, 88 KB (each sub-step doubled the operands); now 2 KB a sub-step
    sizes = [len(_product(NH).source("chunk")) for NH in (2, 4, 6)]
    assert sizes[2] - sizes[1] <= 1.1 * (sizes[1] - sizes[0]), sizes
    assert _product(6).plan.summary == "dplr, rank 6 (diagonal part: no decay)"


@pytest.mark.parametrize("cell", [_product(3), reclang.loads(GATED)], ids=["delta", "gated"])
def test_composed_sub_steps_match_sequential_on_chunk(cell):
    torch.manual_seed(0)
    chunked = cell.module("chunk", chunk_size=4).double()
    sequential = cell.module("sequential").double()
    x = random_inputs(chunked, 2, 9, **GATES)
    assert_matches_reference(chunked, as_reference(sequential), x, random_state(chunked, 2))


def test_composed_sub_steps_match_sequential_on_triton():
    cell = _product(3)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    triton_ = cell.module("triton").double().to(device)
    sequential = cell.module("sequential").double().to(device)
    x = random_inputs(triton_, 2, 5, k=unit, beta=GATES["beta"])
    x = {n: t.to(device) for n, t in x.items()}
    s = {n: t.to(device) for n, t in random_state(triton_, 2).items()}
    assert_matches_reference(triton_, as_reference(sequential), x, s)


# the decay is a sub-step of its own: the stacks _S_a0 = -β k, _S_k0 = k are precomputed
# and read β and k, which no in-kernel operand (w = g, v, q) reads
DECAYED_DELTA = """
cell decayed_delta(H = 2, K = 4, V = 3):
    input q[H, K], k[H, K], v[H, V], g[H, K], beta[H]
    state S[H, K, V] = 0
    dS[h, i, j] = exp(g[h, i]) * S[h, i, j]
    kS[h, j] = sum(l: k[h, l] * dS[h, l, j])
    S[h, i, j] <- dS[h, i, j] + beta[h] * k[h, i] * (v[h, j] - kS[h, j])
    out o[h, j] = sum(i: q[h, i] * S[h, i, j])
"""


def test_the_kernels_operands_name_only_the_stacks_they_read():
    """_S_operands(q, v, g), the backward's in-kernel operands, named the stacks of the
    precomputed a and k too, which read β and k: not its arguments (a NameError)."""
    cell = reclang.loads(DECAYED_DELTA, "decayed_delta.rec")
    source = cell.source("triton")
    operands = source[source.index("def _S_operands(q, v, g):"):source.index("_S_slots =")]
    assert "_S_a0" not in operands and "_S_k0" not in operands
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    triton_ = cell.module("triton").double().to(device)
    sequential = cell.module("sequential").double().to(device)
    x = random_inputs(triton_, 2, 5, **GATES)
    x = {n: t.to(device) for n, t in x.items()}
    s = {n: t.to(device) for n, t in random_state(triton_, 2).items()}
    assert_matches_reference(triton_, as_reference(sequential), x, s)
