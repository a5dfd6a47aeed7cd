"""Wall-clock timing for the CLI and the benchmark scripts (never for tests)."""

from __future__ import annotations

import time


def best_of(fn, repeat: int = 3) -> float:
    """The shortest of `repeat` runs of fn(), in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
