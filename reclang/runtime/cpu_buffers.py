"""The cpu kernel's large outputs from buffers kept mapped between calls
(backends/templates/cpu_buffers.cpp, built and cached as the kernels are,
reclang/runtime/cpp.py).

    out = empty(h0, (Y, B, T, HEADS, N))   # like h0.new_empty: contents undefined

A tensor of at least MIN_BYTES comes from a buffer a freed one left, of the same size in
2 MiB pages, when there is one: its pages are mapped already, where a fresh tensor's are
mapped by the OS on its first write, which cost the scans more than their own work
(docs/benchmarks.md, issue 25). The tensor is an ordinary one to torch (torch.from_dlpack;
its storage cannot be resized); when torch frees it, its buffer goes back to the free list,
up to RECLANG_CPU_BUFFERS bytes kept (reclang/config.py; 0: none, every buffer freed with
its tensor). Smaller tensors, other dtypes, and a machine without a compiler: torch's own.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import math
from pathlib import Path

import torch

from .. import config
from .cpp import CompileError, build

MIN_BYTES = 2 << 20  # one huge page: smaller tensors map few pages
SOURCE = Path(importlib.util.find_spec("reclang.backends").submodule_search_locations[0],
              "templates", "cpu_buffers.cpp")
_NAME = b"dltensor"  # the capsule's name DLPack asks for (kept alive: the capsule points at it)
_capsule = ctypes.pythonapi.PyCapsule_New
_capsule.restype, _capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p,
                                                          ctypes.c_void_p]


@functools.cache  # once per process
def _library() -> ctypes.CDLL | None:
    if config.cpu_buffers() <= 0:
        return None
    try:
        library = build(SOURCE.read_text(encoding="utf-8"), "cpu_buffers")
    except (CompileError, OSError):  # the kernels cannot be built either
        return None
    library.take.restype = ctypes.c_void_p
    library.take.argtypes = [ctypes.c_int32, ctypes.POINTER(ctypes.c_int64), ctypes.c_int32]
    library.set_limit.argtypes = [ctypes.c_int64]
    library.kept_bytes.restype = ctypes.c_int64
    library.set_limit(config.cpu_buffers())
    return library


def empty(like: torch.Tensor, shape: tuple) -> torch.Tensor:
    """A contiguous tensor of `shape`, `like`'s dtype, on the CPU (contents undefined)."""
    bytes_ = math.prod(shape) * like.element_size()
    library = _library() if bytes_ >= MIN_BYTES and like.dtype in (
        torch.float32, torch.float64) and len(shape) <= 8 else None
    managed = library.take(len(shape), (ctypes.c_int64 * len(shape))(*shape),
                           8 * like.element_size()) if library else None
    if not managed:
        return like.new_empty(shape)
    return torch.from_dlpack(_capsule(managed, _NAME, None))
