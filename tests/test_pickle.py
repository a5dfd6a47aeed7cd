"""Modules the ecosystem can carry: pickle, copy.deepcopy, torch.save / torch.load (in a
fresh process) and AveragedModel (EMA), on one spec of each form and each CPU backend."""

import copy
import pickle
import subprocess
import sys

import pytest
import torch
from helpers import SPECS
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import reclang

# a delta rule with params (the catalogue's dplr cells have none)
DELTA_RATE = """cell delta_rate(H = 2, K = 3, V = 4):
    input q[H, K], k[H, K], v[H, V], x[H]
    param w[H] = 1, r[H, V] = normal(0, 1)
    state S[H, K, V] = 0
    beta[h] = sigmoid(w[h] * x[h])
    u[h, j] = v[h, j] - sum(i: k[h, i] * S[h, i, j])
    S[h, i, j] <- S[h, i, j] + beta[h] * k[h, i] * u[h, j]
    out o[h, j] = r[h, j] * sum(i: q[h, i] * S[h, i, j])
"""
SMALL = {"lru": {"D": 3, "N": 4}, "min_gru": {"D": 3, "N": 4}, "gla": {"H": 2, "K": 3, "V": 4},
         "mamba2": {"H": 2, "P": 3, "N": 4}, "lstm": {"D": 3, "N": 4}}
CASES = [("lru", "sequential"), ("lru", "scan"), ("lru", "fft"),  # diag-lti
         ("min_gru", "sequential"), ("min_gru", "scan"),  # diag
         ("mamba2", "sequential"), ("mamba2", "chunk"),  # mat-decay
         ("delta_rate", "sequential"), ("delta_rate", "chunk"),  # dplr
         ("lstm", "sequential")]  # nonlinear


def make(spec, backend):
    torch.manual_seed(0)
    if spec == "delta_rate":
        return reclang.loads(DELTA_RATE, "delta_rate.rec").module(backend)
    return reclang.load(SPECS / f"{spec}.rec", **SMALL[spec]).module(backend)


def inputs(m, T=5):
    torch.manual_seed(1)
    return {d.name: 0.3 * torch.randn(2, T, *d.shape) for d in m.ir.inputs}


def run(m, x):
    """Outputs and final states of the whole sequence, then of one step, as one dict."""
    y, state = m(**x)
    y_t, state_t = m.step(**{k: v[:, 0] for k, v in x.items()})
    ys = y if isinstance(y, dict) else {"y": y}
    ys_t = y_t if isinstance(y_t, dict) else {"y": y_t}
    return {**ys, **state, **{f"step {k}": v for k, v in {**ys_t, **state_t}.items()}}


def assert_same(got, want):
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def pickled(m):
    return pickle.loads(pickle.dumps(m))


@pytest.mark.parametrize("duplicate", [pickled, copy.deepcopy], ids=["pickle", "deepcopy"])
@pytest.mark.parametrize("spec, backend", CASES)
def test_a_copy_runs_as_the_module_does_with_parameters_of_its_own(spec, backend, duplicate):
    m = make(spec, backend)
    c = duplicate(m)
    assert (c.backend, c.source, repr(c)) == (backend, m.source, repr(m))
    assert c._generated.__name__ == m._generated.__name__
    x = inputs(m)
    assert_same(run(c, x), run(m, x))
    before = {k: p.clone() for k, p in m.named_parameters()}
    assert before
    with torch.no_grad():
        for p in c.parameters():
            p.add_(1.0)
    assert_same(dict(m.named_parameters()), before)


def test_a_copy_keeps_the_backend_it_runs_on_cuda_tensors():
    m = reclang.load(SPECS / "gla.rec", **SMALL["gla"]).module("auto")
    c = pickled(m)
    assert (c.backend_for("cpu"), c.backend_for("cuda")) == ("chunk", "triton")
    # the CUDA code is generated on first use (never on a CPU-only run), in the copy too
    assert c._on_device["cuda"][1] is None and "cuda" in c._builders
    source, module = c._builders["cuda"]()
    assert source == reclang.load(SPECS / "gla.rec", **SMALL["gla"]).source("triton")
    assert module is m._builders["cuda"]()[1]  # one module per source


def test_torch_save_then_load_in_a_fresh_process(tmp_path):
    saved = {}
    for spec, backend in CASES:
        m = make(spec, backend)
        x = inputs(m)
        saved[spec, backend] = (m, x, run(m, x))
    torch.save(saved, tmp_path / "modules.pt")
    check = f"""
import torch, sys
assert "reclang" not in sys.modules
saved = torch.load({str(tmp_path / "modules.pt")!r}, weights_only=False)
sys.path.insert(0, {str(SPECS.parent / "tests")!r})
from test_pickle import run, assert_same
for m, x, want in saved.values():
    assert_same(run(m, x), want)
print("loaded", len(saved))
"""
    env = {"RECLANG_CACHE": str(tmp_path / "fresh cache"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"loaded {len(CASES)}"


@pytest.mark.parametrize("spec, backend", [("mamba2", "chunk"), ("lstm", "sequential")])
def test_an_exponential_moving_average_of_a_module(spec, backend):
    m = make(spec, backend)
    ema = AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    first = {k: p.detach().clone() for k, p in m.named_parameters()}
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(2.0)
    ema.update_parameters(m)  # the first update copies
    assert_same({k: p.detach() for k, p in ema.module.named_parameters()},
                {k: 2 * v for k, v in first.items()})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update_parameters(m)
    for k, p in ema.module.named_parameters():
        now = dict(m.named_parameters())[k].detach()
        torch.testing.assert_close(p.detach(), torch.lerp(2 * first[k], now, 0.1))
    x = inputs(m)
    (y, state), (y_module, state_module) = ema(**x), ema.module(**x)
    assert torch.equal(y, y_module)
    assert_same(state, state_module)
