"""bf16 / fp16 inputs are computed in float32: against a float64 run on the same
(rounded) inputs, the outputs are within the rounding of the output dtype, and long
sequences with gates near zero stay finite."""

from pathlib import Path

import pytest
import torch

import reclang

SPECS = Path(__file__).resolve().parent.parent / "specs"
F = torch.nn.functional
CASES = [("gla", dict(H=2, K=16, V=16), "sequential"), ("lstm", dict(D=16, N=32), "sequential"),
         ("mamba_s6", dict(D=16, N=8, R=2), "sequential"), ("min_gru", dict(D=16, N=32), "scan"),
         ("delta_net", dict(H=2, K=16, V=16), "sequential"),
         ("gla", dict(H=2, K=16, V=16), "chunk"), ("delta_net", dict(H=2, K=16, V=16), "chunk"),
         ("mamba2", dict(H=2, P=8, N=8), "chunk"), ("hgrn", dict(D=32), "scan"),
         ("lru", dict(D=8, N=16), "scan"), ("lru", dict(D=8, N=16), "fft")]
# (the triton backend's low-precision test is in test_backend_triton.py, at lengths
# that Triton's interpreter runs quickly)
TRANSFORMS = {"g": F.logsigmoid, "beta": torch.sigmoid, "k": lambda k: F.normalize(k, dim=-1)}


def relative_rms(x, reference):
    x = x.to(reference.dtype)
    return ((x - reference).abs().pow(2).mean().sqrt() /
            reference.abs().pow(2).mean().sqrt()).item()


@pytest.mark.parametrize("dtype, bound", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("name, hypers, backend", CASES)
def test_low_precision_inputs_against_float64(name, hypers, backend, dtype, bound):
    torch.manual_seed(0)
    m = reclang.load(SPECS / f"{name}.rec", **hypers).module(backend)
    inputs = {d.name: TRANSFORMS.get(d.name, lambda v: v)(torch.randn(2, 257, *d.shape))
              for d in m.ir.inputs}
    low = {k: v.to(dtype) for k, v in inputs.items()}
    y, state = m(**low)
    reference, ref_state = m.double()(**{k: v.double() for k, v in low.items()})
    assert y.dtype == dtype
    assert all(s.dtype in (torch.float32, torch.complex64) for s in state.values())
    assert relative_rms(y, reference) < bound
    for k in state:
        assert relative_rms(state[k], ref_state[k]) < 1e-5  # states accumulate in float32


@pytest.mark.parametrize("name, hypers, backend", CASES)
def test_gates_near_zero_over_long_sequences_stay_finite(name, hypers, backend):
    m = reclang.load(SPECS / f"{name}.rec", **hypers).module(backend)
    inputs = {d.name: TRANSFORMS.get(d.name, lambda v: v)(torch.randn(1, 4096, *d.shape))
              for d in m.ir.inputs}
    if "g" in inputs:
        inputs["g"] = torch.full_like(inputs["g"], -30.0)  # decay exp(-30): a gate near 0
    with torch.no_grad():
        y, state = m(**inputs)
    assert torch.isfinite(y).all() and all(torch.isfinite(s).all() for s in state.values())
