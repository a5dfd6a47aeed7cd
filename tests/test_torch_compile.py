"""torch.compile and torch.autocast on every CPU backend, one spec of each form (the cpu
backend's kernel: two torch operators, reclang/runtime/cpu_kernel.py).

`torch.compile(m, fullgraph=True)` must trace RecModule.forward and the generated code
in one graph (no graph break in the recurrence), forward and backward, with outputs,
final states and gradients equal to eager in float64. The "aot_eager" compile backend
runs dynamo and AOTAutograd (the graphs of both passes) without generating kernels,
which takes minutes on a 2-core CPU; one test compiles with inductor.
"""

from __future__ import annotations

import pytest
import torch
from helpers import MATRIX_TRANSFORMS, SPECS, _grads, _loss, random_inputs, random_state

import reclang

# one spec of each form, small, on every CPU backend that runs it
FORMS = {
    "min_gru": ({"D": 3, "N": 4}, ("sequential", "scan", "cpu")),       # diag
    "s4d": ({"D": 2, "N": 3}, ("sequential", "scan", "fft")),           # diag-lti
    "gla": ({"H": 2, "K": 3, "V": 2}, ("sequential", "chunk")),         # mat-decay
    "delta_net": ({"H": 2, "K": 3, "V": 2}, ("sequential", "chunk")),   # dplr
    "lstm": ({"D": 3, "N": 4}, ("sequential", "cpu")),                  # nonlinear
}
CASES = [(spec, backend) for spec, (_, backends) in FORMS.items() for backend in backends]
T = 7  # a prime: whole chunks and a remainder, on the scan (C = 3) and chunk (C = 4) paths


def module(spec: str, backend: str) -> reclang.RecModule:
    torch.manual_seed(0)
    cell = reclang.load(SPECS / f"{spec}.rec", **FORMS[spec][0])
    return cell.module(backend, chunk_size=4 if backend == "chunk" else None).double()


def run_with_grads(m, fn, inputs: dict, state: dict) -> dict:
    """Outputs, final states and the gradients of a random functional of both with
    respect to the inputs, the parameters and the initial states."""
    xs = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    s0 = {k: v.clone().requires_grad_() for k, v in state.items()}
    y, final = fn(state=s0, **xs)
    outs = y if isinstance(y, dict) else {"y": y}
    leaves = {**{f"input {k}": v for k, v in xs.items()}, **{f"state {k}": v for k, v in
                                                             s0.items()},
              **{f"param {k}": v for k, v in m.named_parameters()}}
    grads = _grads(_loss(outs, final), leaves)
    return {**{f"out {k}": v for k, v in outs.items()},
            **{f"final {k}": v for k, v in final.items()},
            **{f"grad {k}": v for k, v in grads.items()}}


def data(m, spec: str):
    return (random_inputs(m, 2, T, **MATRIX_TRANSFORMS.get(spec, {})),
            random_state(m, 2))


@pytest.mark.parametrize("spec,backend", CASES)
def test_fullgraph_compile_equals_eager(spec, backend):
    torch._dynamo.reset()
    m = module(spec, backend)
    inputs, state = data(m, spec)
    want = run_with_grads(m, m, inputs, state)
    got = run_with_grads(m, torch.compile(m, fullgraph=True, backend="aot_eager"),
                         inputs, state)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=lambda msg, k=k: f"{k}: {msg}")


@pytest.mark.parametrize("spec,backend", [("gla", "chunk"), ("s4d", "fft")])
def test_a_compiled_module_keeps_non_finite_values_causal(spec, backend):
    """The causal paths for NaN (chunk's second run, fft's fallback to the scan) branch
    on data in eager; compiled, both are made and selected from: the same outputs."""
    torch._dynamo.reset()
    m = module(spec, backend)
    inputs, state = data(m, spec)
    name = next(iter(inputs))
    inputs[name][:, 4] = float("nan")
    want, _ = m(state=state, **inputs)
    got, _ = torch.compile(m, fullgraph=True, backend="aot_eager")(state=state, **inputs)
    assert torch.isfinite(want[:, :4]).all()
    torch.testing.assert_close(got, want, equal_nan=True)


def test_inductor_compiles_the_scan():
    torch._dynamo.reset()
    m = module("min_gru", "scan")
    inputs, state = data(m, "min_gru")
    want = run_with_grads(m, m, inputs, state)
    got = run_with_grads(m, torch.compile(m, fullgraph=True), inputs, state)
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=lambda msg, k=k: f"{k}: {msg}")


@pytest.mark.parametrize("spec", FORMS)
def test_autocast_gives_one_dtype_on_every_backend(spec):
    """Under autocast(bfloat16) every backend computes in float32: the outputs are the
    float32 ones rounded to bfloat16, the states are float32 (sequence and step)."""
    for backend in FORMS[spec][1]:
        m = module(spec, backend).float()
        inputs = {k: v.float() for k, v in data(m, spec)[0].items()}
        y32, s32 = m(**inputs)
        o32, n32 = m.step(**{k: v[:, 0] for k, v in inputs.items()})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, s = m(**inputs)
            o, n = m.step(**{k: v[:, 0] for k, v in inputs.items()})
        for got, want in ((y, y32), (o, o32)):
            assert got.dtype == torch.bfloat16, backend
            assert torch.equal(got, want.to(torch.bfloat16)), backend
        for got, want in ((s, s32), (n, n32)):
            for k in want:
                assert got[k].dtype == want[k].dtype, (backend, k)
                assert torch.equal(got[k], want[k]), (backend, k)


@pytest.mark.parametrize("spec,backend", [("min_gru", "sequential"), ("min_gru", "scan"),
                                          ("s4d", "fft"), ("lstm", "cpu")])
def test_dynamic_shapes_compile_equals_eager_at_two_lengths(spec, backend):
    """torch.compile(dynamic=True) traces T as a symbol (as dynamo does by itself once a
    second length arrives): the scan's chunk length was math.isqrt of it, which dynamo
    refuses under fullgraph (the chunk backend traces too, in 30 s a case here)."""
    torch._dynamo.reset()
    m = module(spec, backend)
    compiled = torch.compile(m, fullgraph=True, backend="eager", dynamic=True)
    for steps in (T, T + 6):
        inputs = random_inputs(m, 2, steps, **MATRIX_TRANSFORMS.get(spec, {}))
        want, _ = m(**inputs)
        got, _ = compiled(**inputs)
        torch.testing.assert_close(got, want)
