"""The cpu kernel's kept output buffers (reclang/runtime/cpu_buffers.py): a freed large
tensor's buffer is taken again by the next request of its size, past the limit of bytes
kept none is, small tensors are torch's own, and a tensor from a buffer is an ordinary
one (autograd, pickle, views); the kernel's results are the same with buffers or without."""

from __future__ import annotations

import gc
import pickle

import pytest
import torch
from helpers import SPECS

import reclang
from reclang.runtime import cpp, cpu_buffers

pytestmark = pytest.mark.skipif(cpp.compiler() is None, reason="no C++ compiler")
SHAPE = (3, 1 << 19)  # 6 MiB of float32: three huge pages


def test_a_freed_buffer_is_taken_again():
    x = cpu_buffers.empty(torch.empty(0), SHAPE)
    assert x.shape == SHAPE and x.is_contiguous() and x.dtype == torch.float32
    x.fill_(1.5)
    address = x.data_ptr()
    del x
    gc.collect()
    y = cpu_buffers.empty(torch.empty(0), SHAPE)
    assert y.data_ptr() == address  # the same mapped pages, not a fresh mapping
    z = cpu_buffers.empty(torch.empty(0), SHAPE)  # y holds that one: another
    assert z.data_ptr() != address


def test_small_tensors_and_other_dtypes_are_torchs():
    small = cpu_buffers.empty(torch.empty(0, dtype=torch.float64), (4, 5))
    assert small.dtype == torch.float64 and small.untyped_storage().resizable()
    half = cpu_buffers.empty(torch.empty(0, dtype=torch.bfloat16), SHAPE)
    assert half.dtype == torch.bfloat16 and half.untyped_storage().resizable()


def test_past_the_limit_no_buffer_is_kept():
    library = cpu_buffers._library()
    bytes_ = 6 << 20
    try:
        x = cpu_buffers.empty(torch.empty(0), SHAPE)
        before = library.kept_bytes()
        del x
        gc.collect()
        assert library.kept_bytes() == before + bytes_  # kept for the next request
        library.set_limit(0)  # frees what is kept, and keeps none after
        assert library.kept_bytes() == 0
        y = cpu_buffers.empty(torch.empty(0), SHAPE)
        del y
        gc.collect()
        assert library.kept_bytes() == 0
    finally:
        library.set_limit(reclang.config.cpu_buffers())


def test_a_buffer_tensor_is_an_ordinary_tensor():
    x = cpu_buffers.empty(torch.empty(0, dtype=torch.float64), SHAPE).normal_()
    leaf = x.requires_grad_()
    (leaf.permute(1, 0)[:7] * 3).sum().backward()
    assert torch.equal(leaf.grad[:, :7], torch.full((3, 7), 3.0, dtype=torch.float64))
    again = pickle.loads(pickle.dumps(x.detach()))
    assert torch.equal(again, x.detach()) and again.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("spec,hypers", [("hgrn", {"D": 8}), ("lstm", {"D": 3, "N": 4})])
def test_the_kernel_gives_the_same_with_buffers_or_without(spec, hypers, monkeypatch):
    torch.manual_seed(0)
    cell = reclang.load(SPECS / f"{spec}.rec", **hypers)
    m = cell.module("cpu").double()
    x = {d.name: torch.randn(2, 40000, *d.shape, dtype=torch.float64)
         for d in cell.ir.inputs}  # outputs of several MiB: from the kept buffers
    if "g" in x:  # HGRN's log forget gate: at most 0
        x["g"] = -x["g"].abs()
    results = []
    for kept in (True, False):
        if not kept:
            monkeypatch.setattr(cpu_buffers, "MIN_BYTES", float("inf"))
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
        y, final = m(**leaves)
        y = y if torch.is_tensor(y) else next(iter(y.values()))
        (y.square().mean() + sum(s.sum() for s in final.values())).backward()
        results.append([y.detach(), *final.values(), *(v.grad for v in leaves.values())])
    for a, b in zip(*results):
        assert torch.equal(a, b)
