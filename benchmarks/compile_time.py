"""Time parse + check + analyze + emit for every spec in specs/ (target: < 100 ms each).

    python benchmarks/compile_time.py [--repeat 3]

Each stage is timed from a fresh parse (no caches shared between specs); the best of
`--repeat` runs is reported, in milliseconds.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from reclang.analysis.plan import make_plan
from reclang.ast_to_ir import build_ir
from reclang.codegen.loop import Program
from reclang.parser import parse

SPECS = Path(__file__).resolve().parent.parent / "specs"


def time_one(path: Path) -> dict[str, float]:
    text = path.read_text()
    t0 = time.perf_counter()
    cell = parse(text, path.name)
    t1 = time.perf_counter()
    ir = build_ir(cell)
    t2 = time.perf_counter()
    plan = make_plan(ir)
    t3 = time.perf_counter()
    Program(ir).source()
    t4 = time.perf_counter()
    return {"parse": t1 - t0, "check": t2 - t1, "analyze": t3 - t2, "emit": t4 - t3,
            "total": t4 - t0, "form": plan.form}


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--repeat", type=int, default=3)
    repeat = args.parse_args().repeat
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, python {platform.python_version()}")
    print(f"{'spec':<26}{'form':<13}{'parse':>8}{'check':>8}{'analyze':>9}{'emit':>8}"
          f"{'total':>8}  (ms)")
    worst = 0.0
    for path in sorted(SPECS.glob("*.rec")):
        runs = [time_one(path) for _ in range(repeat)]
        best = min(runs, key=lambda r: r["total"])
        worst = max(worst, best["total"])
        print(f"{path.stem:<26}{best['form']:<13}" + "".join(
            f"{best[k] * 1e3:{w}.1f}" for k, w in
            (("parse", 8), ("check", 8), ("analyze", 9), ("emit", 8), ("total", 8))))
    print(f"slowest: {worst * 1e3:.1f} ms (target < 100 ms)")


if __name__ == "__main__":
    main()
