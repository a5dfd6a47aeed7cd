"""What `auto` runs on CPU tensors: the fastest backend the plan proves, by a ranking
measured on the CPU (benchmarks/cpu.py prints the measurements, docs/benchmarks.md holds
them), with the reason `reclang inspect` prints.

The ranking is a calibrated cost model reduced to its order, which held at every size
measured (docs/benchmarks.md, "CPU: the compiled loop"): the chunkwise form's matmuls
beat any loop over time for matrix states; the compiled loop (backends/cpu_loop.py) runs
a step in the time the PyTorch loop spends launching one of its ops, and reads each
operand once where the chunked scan makes several passes; the scan beats the PyTorch
loop on small per-step states. Only a backend the plan proves runs the cell on any
inputs is ranked (`Cell.proves`). `RECLANG_AUTO_COMPILED=0` (reclang/config.py) leaves
the compiled one out: a pin, for tests and for machines where compiling is unwanted."""

from __future__ import annotations

from . import config

CPU_RANKING = (
    ("chunk", "matrix states: the chunkwise form's matmuls, 4-12x the loop from T = 512"),
    ("cpu", "the whole time loop compiled (C++), forward and backward"),
    ("scan", "a chunked scan in PyTorch: fewer, larger ops than the loop"),
    ("sequential", "the PyTorch loop: the one backend that runs every cell"),
)


def cpu_choice(cell, compiled: bool | None = None) -> tuple[str, str]:
    """(backend, why) for CPU tensors: the first of CPU_RANKING the cell proves.
    `compiled`: whether the compiled backend may be chosen (None: RECLANG_AUTO_COMPILED)."""
    compiled = config.auto_compiled() if compiled is None else compiled
    for backend, why in CPU_RANKING:
        if (compiled or backend != "cpu") and cell.proves(backend):
            return backend, why
    raise AssertionError("sequential proves every cell")
