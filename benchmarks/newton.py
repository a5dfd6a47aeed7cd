"""Time the newton backend against the sequential loop, on the CPU.

    python benchmarks/newton.py [--T 256 1024 4096 16384] [--N 16 64] [--B 1] [--repeat 2]
                                [--cells para_gru para_lstm indrnn elman gru] [--threads 1]
                                [--clock cpu] [--reverse] [--varlen 64 128]

Per cell, state size N (inputs of D = N) and length T: Newton iterations to converge
(reclang.runtime.newton.last_report), forward (no autograd) and forward+backward times
(best of --repeat, float32) of both backends and the speed-up of newton over the loop,
as rows of a Markdown table. Both modules share parameters and inputs; the script
first checks that their outputs agree (float32: 1e-4). `--threads`: torch's intra-op
threads (default: torch's own); on a shared 2-core machine one thread per process
avoids BLAS threads spinning against other processes (a 4x4 bmm took 10 ms with two).
`--clock cpu`: the process's CPU time (time.process_time) instead of the wall clock,
which on a loaded machine counts the other processes' turns too. `--reverse`: also
the newton backend with J by reverse mode (NewtonSchedule(derivatives="reverse")), the
path of cells without a lane form, where the default prints J from the lane form.
`--varlen B T`: instead, per cell and N, B sequences of random lengths T/8 … T
(`lengths`) in one Newton solve (the module packs them) against one solve per group of
equal lengths (reclang/runtime/packing.py's grouping, which the backend used before).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from pathlib import Path

import torch

import reclang
from reclang.runtime import newton
from reclang.schedule import NewtonSchedule
from reclang.timing import best_of

SPECS = Path(__file__).resolve().parent.parent / "specs"
CELLS = ("para_gru", "para_lstm", "indrnn", "elman", "gru")


def setup(name: str, N: int, B: int, T: int, reverse: bool):
    cell = reclang.load(SPECS / f"{name}.rec", N=N, D=N)
    torch.manual_seed(0)
    modules = {"sequential": cell.module("sequential"), "newton": cell.module("newton")}
    if reverse:
        modules["reverse"] = cell.module("newton", schedule=NewtonSchedule(derivatives="reverse"))
    for m in modules.values():
        m.load_state_dict(modules["sequential"].state_dict())
    x = torch.randn(B, T, N, requires_grad=True)
    return cell, modules, x




def run(name: str, N: int, B: int, T: int, repeat: int, timer, reverse: bool) -> dict:
    cell, modules, x = setup(name, N, B, T, reverse)
    with torch.no_grad():
        want = modules["sequential"](x=x)[0]
        for label in [k for k in modules if k != "sequential"]:
            torch.testing.assert_close(modules[label](x=x)[0], want, atol=1e-4, rtol=1e-4)
    modules["newton"](x=x)  # last_report: the default path's solve
    result = {"iterations": newton.last_report.iterations,
              "converged": newton.last_report.converged,
              "jacobian": cell.form("newton").kind}
    for label, m in modules.items():
        with torch.no_grad():
            result[label, "fwd"] = timer(lambda m=m: m(x=x), repeat)
        result[label, "fwd+bwd"] = timer(
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
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--reverse", action="store_true")
    parser.add_argument("--varlen", type=int, nargs=2, metavar=("B", "T"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    timer = functools.partial(best_of, clock=clock)
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, float32, B={args.B}, best of {args.repeat} (ms, "
          f"{args.clock} clock); load average at the start {load_average()}")
    if args.varlen:
        print("| cell | N | B | T | distinct lengths | one solve | one per length | speed-up |")
        print("|---|---|---|---|---|---|---|---|")
        for name in args.cells:
            for N in args.N:
                print(varlen(name, N, *args.varlen, args.repeat, timer), flush=True)
        print(f"# load average at the end {load_average()}")
        return
    rev = " newton (reverse) {0} |"
    header = "| cell | Jacobian | N | T | iterations |" + "".join(
        f" seq {w} | newton {w} | speed-up |{rev.format(w) if args.reverse else ''}"
        for w in ("fwd", "fwd+bwd"))
    print(header)
    print("|" + "---|" * header.count(" |"))
    for name in args.cells:
        for N in args.N:
            for T in args.T:
                r = run(name, N, args.B, T, args.repeat, timer, args.reverse)
                cells = [name, r["jacobian"], N, T,
                         f"{r['iterations']}{'' if r['converged'] else ' (+ loop)'}"]
                for what in ("fwd", "fwd+bwd"):
                    seq, new = r["sequential", what], r["newton", what]
                    cells += [f"{seq * 1e3:.0f}", f"{new * 1e3:.0f}", f"{seq / new:.2f}x"]
                    if args.reverse:
                        cells.append(f"{r['reverse', what] * 1e3:.0f}")
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    print(f"# load average at the end {load_average()}")


def varlen(name: str, N: int, B: int, T: int, repeat: int, timer) -> str:
    from reclang.runtime import packing

    m = reclang.load(SPECS / f"{name}.rec", N=N, D=N).module("newton")
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(max(1, T // 8), T + 1, (B,), generator=gen).tolist()
    x = torch.randn(B, T, N, generator=gen)

    def one(part, state):
        y, final = m(**part, state=state)
        return {"y": y}, final

    with torch.no_grad():
        torch.testing.assert_close(m(x=x, lengths=lengths)[0],
                                   packing.run_padded(one, {"x": x}, None, lengths)[0]["y"])
        packed = timer(lambda: m(x=x, lengths=lengths), repeat)
        grouped = timer(lambda: packing.run_padded(one, {"x": x}, None, lengths), repeat)
    return (f"| {name} | {N} | {B} | {T} | {len(set(lengths))} | {packed * 1e3:.0f} | "
            f"{grouped * 1e3:.0f} | {grouped / packed:.2f}x |")


def load_average() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"


if __name__ == "__main__":
    main()
