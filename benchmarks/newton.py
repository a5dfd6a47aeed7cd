"""Time the newton backend against the sequential loop, on the CPU.

    python benchmarks/newton.py [--T 256 1024 4096 16384] [--N 16 64] [--B 1] [--repeat 2]
                                [--cells para_gru para_lstm indrnn elman gru] [--threads 1]

Per cell, state size N (inputs of D = N) and length T: Newton iterations to converge
(reclang.runtime.newton.last_report), forward (no autograd) and forward+backward times
(best of --repeat, float32) of both backends and the speed-up of newton over the loop,
as rows of a Markdown table. Both modules share parameters and inputs; the script
first checks that their outputs agree (float32: 1e-4). `--threads`: torch's intra-op
threads (default: torch's own); on a shared 2-core machine one thread per process
avoids BLAS threads spinning against other processes (a 4x4 bmm took 10 ms with two).
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

import reclang
from reclang.runtime import newton
from reclang.timing import best_of

SPECS = Path(__file__).resolve().parent.parent / "specs"
CELLS = ("para_gru", "para_lstm", "indrnn", "elman", "gru")


def setup(name: str, N: int, B: int, T: int):
    cell = reclang.load(SPECS / f"{name}.rec", N=N, D=N)
    torch.manual_seed(0)
    modules = {"sequential": cell.module("sequential"), "newton": cell.module("newton")}
    modules["newton"].load_state_dict(modules["sequential"].state_dict())
    x = torch.randn(B, T, N, requires_grad=True)
    return cell, modules, x


def run(name: str, N: int, B: int, T: int, repeat: int) -> dict:
    cell, modules, x = setup(name, N, B, T)
    with torch.no_grad():
        want = modules["sequential"](x=x)[0]
        got = modules["newton"](x=x)[0]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    result = {"iterations": newton.last_report.iterations,
              "converged": newton.last_report.converged,
              "jacobian": cell.form("newton").kind}
    for label, m in modules.items():
        with torch.no_grad():
            result[label, "fwd"] = best_of(lambda m=m: m(x=x), repeat)
        result[label, "fwd+bwd"] = best_of(
            lambda m=m: m(x=x)[0].square().mean().backward(), repeat)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--N", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cells", nargs="+", default=list(CELLS))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, float32, B={args.B}, best of {args.repeat} (ms); load "
          f"average at the start {load:.1f}")
    print("| cell | Jacobian | N | T | iterations | seq fwd | newton fwd | speed-up | "
          "seq fwd+bwd | newton fwd+bwd | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.cells:
        for N in args.N:
            for T in args.T:
                r = run(name, N, args.B, T, args.repeat)
                cells = [name, r["jacobian"], N, T,
                         f"{r['iterations']}{'' if r['converged'] else ' (+ loop)'}"]
                for what in ("fwd", "fwd+bwd"):
                    seq, new = r["sequential", what], r["newton", what]
                    cells += [f"{seq * 1e3:.0f}", f"{new * 1e3:.0f}", f"{seq / new:.2f}x"]
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
