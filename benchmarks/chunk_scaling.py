"""How the chunk backend's time grows with T: forward and forward+backward of every
catalogue cell whose plan the chunk backend runs, at several lengths, and the fitted
exponent p of time ∝ T^p (a recurrence of fixed state size should give p ≈ 1).

    python benchmarks/chunk_scaling.py [--T 1024 4096 16384] [--repeat 3] [--threads N]
                                       [--cells delta_net gla ...]

B = 2, H = 4, K = V = 64 (Mamba-2: P = N = 64), float32, the default schedule. Inputs
are drawn as the papers constrain them (log decays ≤ 0, unit keys, β in [0, 1]), so
that the states stay finite over the longest T. Prints milliseconds of wall-clock time
(best of --repeat, after one untimed run), the time of the longest T over the one
before it, and p, the least-squares slope of log time against log T, for the wall-clock
time and for this process's CPU time (which other processes on a shared machine do not
inflate; run with --threads 1 there, see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

import reclang

SPECS = Path(__file__).resolve().parent.parent / "specs"
B = 2
SIZES = {"H": 4, "K": 64, "V": 64, "P": 64, "N": 64}
sys.path.insert(0, str(SPECS.parent / "tests"))
# inputs as the papers constrain them, as the tests draw them
from helpers import MATRIX_TRANSFORMS as TRANSFORMS  # noqa: E402


def chunk_cells() -> list[str]:
    """The catalogue specs whose plan the chunk backend runs."""
    return [p.stem for p in sorted(SPECS.glob("*.rec"))
            if reclang.load(p).supports("chunk")]


def passes(name: str, T: int):
    """(forward, forward+backward) of one cell at length T, as functions of no
    arguments, and whether its outputs are finite."""
    path = SPECS / f"{name}.rec"
    hypers = {k: v for k, v in SIZES.items() if k in reclang.load(path).hypers}
    torch.manual_seed(0)
    module = reclang.load(path, **hypers).module("chunk")
    gen = torch.Generator().manual_seed(1)
    x = {}
    for d in module.ir.inputs:
        raw = torch.randn(B, T, *d.shape, generator=gen)
        x[d.name] = TRANSFORMS.get(name, {}).get(d.name, lambda v: v)(raw).requires_grad_()

    def loss():
        outs = module(**x)[0]
        outs = outs.values() if isinstance(outs, dict) else [outs]
        return sum(y.square().mean() for y in outs)

    def forward():
        with torch.no_grad():
            return loss()

    return forward, lambda: loss().backward(), bool(torch.isfinite(forward()))


def best_of(fn, repeat: int) -> tuple[float, float]:
    """The shortest wall-clock time of `repeat` runs of fn() and the shortest CPU time
    of this process (user + system, all threads): the second leaves out the time that
    other processes on a shared machine take from it."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def exponent(Ts, times) -> float:
    """The least-squares slope of log(time) against log(T)."""
    xs, ys = [math.log(t) for t in Ts], [math.log(s) for s in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cells", nargs="+", default=None)
    args = parser.parse_args()
    if len(args.T) < 2:
        parser.error("an exponent needs at least two lengths")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, B={B}, H=4, K=V=64 (P=N=64), float32")
    times = "".join(f"{'T=' + str(T):>10}" for T in args.T)
    print(f"{'cell':<17}{'pass':<9}{times}   last/prev  exponent  (CPU time)")
    for name in args.cells or chunk_cells():
        runs = {"fwd": [], "fwd+bwd": []}
        finite = True
        for T in args.T:
            forward, training, ok = passes(name, T)
            finite = finite and ok
            training()  # one untimed run: first-call allocations and caches
            runs["fwd"].append(best_of(forward, args.repeat))
            runs["fwd+bwd"].append(best_of(training, args.repeat))
        for what, pairs in runs.items():
            wall, cpu = zip(*pairs)
            ms = "".join(f"{s * 1e3:>8.0f}ms" for s in wall)
            note = "" if finite else "   (outputs not finite)"
            print(f"{name:<17}{what:<9}{ms}{wall[-1] / wall[-2]:>11.1f}x"
                  f"{exponent(args.T, wall):>10.2f}{exponent(args.T, cpu):>11.2f}{note}",
                  flush=True)

if __name__ == "__main__":
    main()
