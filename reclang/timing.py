"""Timing for the CLI and the benchmark scripts (never for tests): the wall clock, or
the process's CPU time, which leaves out waiting for a core on a loaded machine."""

from __future__ import annotations

import time

import torch


def best_of(fn, repeat: int = 3, clock=time.perf_counter) -> float:
    """The shortest of `repeat` runs of fn(), in seconds of `clock` (time.process_time:
    CPU time), waiting for CUDA's queue before and after each, so that GPU work is
    counted."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = []
    for _ in range(repeat):
        sync()
        start = clock()
        fn()
        sync()
        times.append(clock() - start)
    return min(times)


def load_average() -> str:
    """The machine's load, to print beside timings ("load average 0.5 0.6 0.7")."""
    with open("/proc/loadavg") as f:
        return "load average " + " ".join(f.read().split()[:3])


def peak_memory(fn) -> int:
    """The most bytes of tensor storage alive at once during fn(), counting only the
    storages that fn's own operations create (inputs and parameters excluded).

    CPU tensors have no allocator statistics like CUDA's max_memory_allocated, so
    every op's outputs are watched through a dispatch mode: a storage counts from
    the op that creates it until the last tensor using it is freed. The backward
    pass is included when fn calls it (on the CPU autograd runs in this thread)."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    live: dict[int, list[int]] = {}  # data pointer -> [bytes, tensors alive]
    total = highest = 0

    def release(ptr):
        nonlocal total
        entry = live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            total -= entry[0]
            del live[ptr]

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal total, highest
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    ptr = t.untyped_storage().data_ptr()
                    if ptr not in live:
                        live[ptr] = [t.untyped_storage().nbytes(), 0]
                        total += live[ptr][0]
                        highest = max(highest, total)
                    live[ptr][1] += 1
                    weakref.finalize(t, release, ptr)
            return out

    with Watch():
        fn()
    return highest
