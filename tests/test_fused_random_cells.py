"""Random nonlinear cells (hypothesis) on the triton backend's fused loop against the
sequential backend, in float64 under the interpreter: the lane form, the Triton
printing of any mix of the language's functions, and their sympy derivatives in the
backward kernel (gradients of inputs, params and initial states). c's update may be two
sub-steps of a `for` block."""

import os

import pytest
import torch
from helpers import (as_reference, assert_matches_reference, expression, random_inputs,
                     random_state)
from hypothesis import example, given, settings
from hypothesis import strategies as st

import reclang
from reclang.analysis.lanes import lane_form

# expressions over the unit n; z[0], z[1] hold W x + U h. c's update also reads c
# through a weight of its own (a product of the second state); the others read the new
# c, which the fused loop takes elementwise only.
TERMS = ["z[0, n]", "z[1, n]", "c[n]", "h[n]", "p[n]", "p[n] * c[n]", "0.5", "sum(d: x[d])"]
PRODUCT = "sum(m: V[n, m] * c[m])"
FUNCTIONS = ["tanh({})", "sigmoid({})", "softplus({}) * 0.1", "logsigmoid({})",
             "exp(-abs({}))", "relu({})", "silu({})", "max({}, 0.2)", "({}) / (1 + abs(p[n]))",
             "sqrt(1 + ({}) ** 2)", "-{}", "({}) % 1.5", "floor({}) * 0.1",
             "({}) // 0.7 * 0.1"]


EXAMPLE = ("cell f(D = 3, N = 5):\n"
           "    input x[D]\n"
           "    param W[2, N, D] ~ normal(0, 0.5)\n"
           "    param U[2, N, N] ~ normal(0, 0.3)\n"
           "    param V[N, N] ~ normal(0, 0.3)\n"
           "    param p[N] ~ normal(0, 1)\n"
           "    state h[N] = 0, c[N] = 0\n"
           "    z[g, n] = sum(d: W[g, n, d] * x[d]) + sum(m: U[g, n, m] * h[m])\n"
           "{c_update}"
           "    h[n] <- tanh(z[1, n] + {h_new})\n"    # reads h: the update is a step
           "    out y[n] = h[n] * ({y})\n")


# c's update, and the terms it draws from: as sub-steps of a `for` block, without the
# product (the lane form takes a weighted sum over the units of a state's previous
# step, not of an earlier sub-step's value)
C_UPDATES = [("    c[n] <- 0.5 * c[n] + tanh({})\n", (*TERMS, PRODUCT)),
             ("    for r in 2:\n        c[n] <- 0.5 * c[n] + tanh({}) * 0.5 ** r\n", TERMS)]


@st.composite
def cells(draw):
    c_update, c_terms = draw(st.sampled_from(C_UPDATES))
    c_new = draw(expression(2, c_terms, FUNCTIONS))
    h_new, y = draw(expression(2, TERMS, FUNCTIONS)), draw(expression(2, TERMS, FUNCTIONS))
    return EXAMPLE.format(c_update=c_update.format(c_new), h_new=h_new, y=y)


# the padding units past N compute what they like (0 / 0 included) and are masked
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=int(os.environ.get("RANDOM_CELLS", 60)) // 4, deadline=None)
@given(cells(), st.integers(1, 4), st.integers(1, 3))
# an operand without the unit axis, added to one with it
@example(EXAMPLE.format(c_update=C_UPDATES[0][0].format("c[n]"),
                        h_new="max(sum(d: x[d]), 0.2)", y="z[0, n]"), 2, 2)
def test_random_nonlinear_cells_on_the_fused_loop(text, T, B):
    cell = reclang.loads(text, "random.rec")
    assert cell.plan.form == "nonlinear" and lane_form(cell.ir)  # by construction
    torch.manual_seed(0)
    triton_ = cell.module("triton").double()
    sequential = cell.module("sequential").double()
    assert_matches_reference(triton_, as_reference(sequential), random_inputs(triton_, B, T),
                             random_state(triton_, B), atol=1e-9, rtol=1e-7)
