"""What `auto` runs on CPU tensors where nothing is measured (cost/auto.py: under
tracing, transforms, distributed, varlen calls, RECLANG_AUTO_MEASURE=0): the first
backend of a static ranking that the plan proves, with the reason `reclang inspect`
prints. Elsewhere auto.py times the proved backends per size and keeps the fastest.

The ranking is a calibrated cost model reduced to its order, which held at every size
measured (docs/benchmarks.md, "CPU: the compiled loop"): the chunkwise form's matmuls
beat any loop over time for matrix states; the compiled loop (backends/cpu_loop.py) runs
a nonlinear cell's step in the time the PyTorch loop spends launching one of its ops;
the scan beats the PyTorch loop on small per-step states. Not a model of the shapes:
at B = 8, T = 4096, D = 512 the loop, the scan and the compiled loop are within 1.3x of
each other on diagonal cells, in an order that changes from cell to cell (which is why
auto measures). Only a backend the plan proves runs the cell on any inputs is ranked
(`Cell.proves`). `RECLANG_AUTO_COMPILED=0` (reclang/config.py) leaves the compiled one
out: a pin, for tests and for machines where compiling is unwanted."""

from __future__ import annotations

from .. import config

CPU_RANKING = (  # (backend, the plan forms it is ranked for (None: all), why)
    ("chunk", None, "matrix states: the chunkwise form's matmuls, 4-12x the loop from T = 512"),
    # diagonal cells: the compiled loop's scan is fast, but its operands (stacked in
    # PyTorch) made minGRU's and HGRN's forward slower than scan's or the loop's
    ("cpu", ("nonlinear",), ("the whole time loop compiled (C++): 1.3-22x the PyTorch "
                             "loop, GRU and RNN faster than torch.nn")),
    ("scan", None, "a chunked scan in PyTorch: fewer, larger ops than the loop"),
    ("sequential", None, "the PyTorch loop: the one backend that runs every cell"),
)


def cpu_choice(cell, compiled: bool | None = None) -> tuple[str, str]:
    """(backend, why) for CPU tensors: the first of CPU_RANKING the cell proves.
    `compiled`: whether the compiled backend may be chosen (None: RECLANG_AUTO_COMPILED)."""
    compiled = config.auto_compiled() if compiled is None else compiled
    for backend, forms, why in CPU_RANKING:
        if forms is not None and cell.plan.form not in forms:
            continue
        if (compiled or backend != "cpu") and cell.proves(backend):
            return backend, why
    raise AssertionError("sequential proves every cell")
