"""Every `#pragma omp simd` loop of every catalogue cell's cpu kernel is vectorized by the
compiler, for float32 and float64 and both block sizes. A loop GCC leaves scalar is
still correct, so no test of values sees it; it is 4-5x slower (LSTM's step on AVX2,
before -fno-trapping-math and the select-then-divide sigmoid: docs/benchmarks.md).
GCC says which loops it could not vectorize (-fopt-info-vec-missed); the kernel is
compiled to an object file here with the backend's own flags, for this machine."""

from __future__ import annotations

import re
import subprocess

import pytest
from helpers import catalogue_cell, catalogue_names

from reclang.runtime import cpp

CELLS = [name for name in catalogue_names() if catalogue_cell(name).supports("cpu")]


def simd_loops(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) line numbers (from 1) of the loop after each `#pragma omp simd`:
    a loop on one line, or the lines up to its closing brace."""
    loops = []
    for i, line in enumerate(lines):
        if "#pragma omp simd" not in line:
            continue
        start = end = i + 1  # 0-based index of the `for` line
        if lines[start].rstrip().endswith("{"):
            depth = 0
            for end in range(start, len(lines)):
                depth += lines[end].count("{") - lines[end].count("}")
                if depth == 0:
                    break
        loops.append((start + 1, end + 1))
    return loops


def gcc() -> str:
    cxx = cpp.compiler()
    if cxx is None or "GCC" not in cpp._version(cxx) and "g++" not in cpp._version(cxx):
        pytest.skip("reads GCC's -fopt-info report; the compiler here is not GCC")
    return cxx


@pytest.mark.parametrize("name", CELLS)
def test_every_simd_loop_is_vectorized(name, tmp_path):
    cxx = gcc()
    source = catalogue_cell(name).module("cpu")._generated.CPP
    path = tmp_path / f"{name}.cpp"
    path.write_text(source)
    flags = [f for f in cpp.FLAGS if f != "-shared"]
    report = subprocess.run([cxx, *flags, "-c", str(path), "-o", str(tmp_path / "k.o"),
                             "-fopt-info-vec-missed"], capture_output=True, text=True,
                            check=True, timeout=cpp.COMPILE_TIMEOUT_S).stderr
    missed = {int(m) for m in re.findall(rf"{name}\.cpp:(\d+):\d+: missed: couldn't "
                                          r"vectorize loop", report)}
    loops = simd_loops(source.splitlines())
    assert len(loops) >= 2  # the forward's and the backward's step, at least
    scalar = [(a, b) for a, b in loops if any(a <= line <= b for line in missed)]
    assert not scalar, "\n\n".join("\n".join(source.splitlines()[a - 1:b]) for a, b in scalar)
