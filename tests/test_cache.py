"""The cache of generated code and its loader (reclang/generated.py, reclang/config.py):
what runs is the compiler's text, registered under an importable name, whatever the
cache folder holds."""

import importlib
import pickle

import pytest
import torch

import reclang

SPEC = """cell acc(D = 3):
    input x[D]
    param w[D] = 1
    state s[D] = 0
    s[d] <- 0.5 * s[d] + w[d] * x[d]
    out y[d] = s[d]
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECLANG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_generated_functions_are_importable_by_qualified_name(cache):
    """torch.compile and pickle look functions up by module and name."""
    code = reclang.loads(SPEC).module()._generated
    assert code.__name__.startswith("reclang_generated.acc_sequential_")
    assert importlib.import_module(code.forward.__module__) is code
    assert pickle.loads(pickle.dumps(code.forward)) is code.forward


def test_torch_compile_runs_a_module(cache):
    m = reclang.loads(SPEC).module()
    x = torch.randn(2, 5, 3)
    y, _ = torch.compile(m, backend="eager")(x=x)
    assert torch.equal(y, m(x=x)[0])
