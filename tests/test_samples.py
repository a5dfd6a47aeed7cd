"""reclang/samples.py: the random inputs of `reclang run` and `bench` keep the gates the
plan finds in the ranges the cell expects (a log decay <= 0, a decay gate in (0, 1), a
delta rule's key of unit norm and its β in (0, 1)); every other input stays normal."""

import torch

import reclang
from reclang.samples import gate_kinds, random_inputs


def kinds(src: str) -> dict:
    return gate_kinds(reclang.loads(src).plan)


def test_log_decays_are_found_with_their_sign():
    assert kinds("""cell c(D = 3):
    input g[D], x[D]
    state h[D] = 0
    h[d] <- exp(g[d]) * h[d] + x[d]
    out y[d] = h[d]
""") == {"g": "log"}
    assert kinds("""cell c(D = 3):
    input g[D], x[D]
    state h[D] = 0
    h[d] <- exp(-2 * g[d]) * h[d] + x[d]
    out y[d] = h[d]
""") == {"g": "-log"}


def test_a_decay_read_whole_is_a_gate_in_the_unit_interval():
    assert kinds("""cell c(D = 3):
    input a[D], x[D]
    state h[D] = 0
    h[d] <- (1 - a[d]) * h[d] + x[d]
    out y[d] = h[d]
""") == {"a": "unit"}


def test_a_delta_rule_key_is_normalized_along_the_summed_axis():
    cell = reclang.load("specs/delta_net.rec", H=2, K=4, V=4)
    assert gate_kinds(cell.plan) == {"k": ("norm", 1), "beta": "unit"}
    torch.manual_seed(0)
    xs = random_inputs(cell, 3, 5, 2.0, dtype=torch.float64)
    assert torch.allclose(xs["k"].norm(dim=-1), torch.ones(3, 5, 2, dtype=torch.float64))
    assert ((xs["beta"] > 0) & (xs["beta"] < 1)).all()
    assert xs["q"].shape == (3, 5, 2, 4) and xs["q"].abs().max() > 1  # normal, scale 2


def test_inputs_without_a_gate_are_normal_samples_of_the_scale():
    cell = reclang.load("specs/gla.rec", H=1, K=4, V=4)
    torch.manual_seed(0)
    xs = random_inputs(cell, 64, 64, 0.5)
    assert (xs["g"] <= 0).all()
    assert abs(xs["v"].std().item() - 0.5) < 0.02 and abs(xs["v"].mean().item()) < 0.02


def test_a_low_rank_pair_of_two_inputs_is_drawn_as_one_contracting_term():
    """RWKV-7's b aᵀ: a of unit norm along the key axis, b = -a ⊙ u with u in (0, 1),
    so that I + b aᵀ contracts (normal a and b made the state nan by T = 64)."""
    cell = reclang.load("specs/rwkv7.rec", H=2, K=4, V=4)
    assert gate_kinds(cell.plan) == {"w": "log", "a": ("norm", 1), "b": ("against", "a")}
    torch.manual_seed(0)
    xs = random_inputs(cell, 3, 5, dtype=torch.float64)
    assert torch.allclose(xs["a"].norm(dim=-1), torch.ones(3, 5, 2, dtype=torch.float64))
    u = -xs["b"] / xs["a"]
    assert ((u > 0) & (u < 1)).all()
    y, state = cell.module("sequential").double()(**random_inputs(cell, 2, 64,
                                                                   dtype=torch.float64))
    assert torch.isfinite(y).all() and state["S"].abs().max() < 1e3
