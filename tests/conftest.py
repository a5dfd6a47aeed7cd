"""Test configuration: under CI (CI=true) hypothesis runs a fixed, derandomized set of
examples, so that a run is reproducible; locally it explores new examples each time.
Without a GPU, Triton kernels run under Triton's interpreter on the CPU: the variable
must be set before triton is first imported."""

import os

import torch
from hypothesis import settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# `auto` picks among the PyTorch backends (reclang/cost/): a compile per cell it built
# would take minutes; tests/test_cpu_loop.py checks what it picks with compiling allowed
os.environ.setdefault("RECLANG_AUTO_COMPILED", "0")
# and by the static ranking, not by timing the backends: the same choice on every run
# (tests/test_cost.py checks the measuring with a fake timer)
os.environ.setdefault("RECLANG_AUTO_MEASURE", "0")
# pytest-xdist's workers share the cores: each gets its share of intra-op threads, so
# that two workers on two cores do not spin four BLAS threads against each other
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (_cores or 1) // _workers))

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
