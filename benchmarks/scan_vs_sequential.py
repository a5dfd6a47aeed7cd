"""Time the scan and fft backends against the sequential one, side by side, on the CPU.

    python benchmarks/scan_vs_sequential.py [--T 4096] [--repeat 3]

Forward and forward+backward, float32; prints milliseconds (best of --repeat) and the
speed-up of each parallel backend over the loop, and the peak memory of one
forward+backward of each (reclang.timing.peak_memory). All modules of a cell share
parameters and inputs; the script first checks that they agree.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

import reclang
from reclang.timing import best_of, peak_memory

SPECS = Path(__file__).resolve().parent.parent / "specs"
CASES = [("min_gru", dict(D=64, N=128), 8), ("mamba_s6", dict(D=64, N=16, R=4), 4),
         ("hgrn", dict(D=256), 8), ("rg_lru", dict(D=128), 8),
         ("s4d", dict(D=64, N=16), 4), ("lru", dict(D=64, N=128), 8)]
PARALLEL = ("scan", "fft")


def outputs(m, inputs) -> dict:
    y, _ = m(**inputs)
    return y if isinstance(y, dict) else {"y": y}


def setup(name, hypers, batch, T):
    """The modules of a cell that can run it, sharing parameters, and the inputs."""
    cell = reclang.load(SPECS / f"{name}.rec", **hypers)
    torch.manual_seed(0)
    modules = {"sequential": cell.module("sequential")}
    for backend in PARALLEL:
        if cell.supports(backend):
            modules[backend] = cell.module(backend)
            modules[backend].load_state_dict(modules["sequential"].state_dict())
    inputs = {d.name: torch.randn(batch, T, *d.shape) for d in cell.ir.inputs}
    if "g" in inputs:
        inputs["g"] = torch.nn.functional.logsigmoid(inputs["g"])
    inputs = {k: v.requires_grad_() for k, v in inputs.items()}
    return modules, inputs


def training_step(name, hypers, batch, T, backend):
    """One forward+backward of one backend, as a function of no arguments."""
    modules, inputs = setup(name, hypers, batch, T)
    m = modules[backend]
    return lambda: sum(v.abs().square().mean() for v in outputs(m, inputs).values()).backward()


def run(name, hypers, batch, T, repeat):
    modules, inputs = setup(name, hypers, batch, T)
    with torch.no_grad():
        want = outputs(modules["sequential"], inputs)
        for m in modules.values():
            got = outputs(m, inputs)
            for k in want:
                torch.testing.assert_close(got[k], want[k], atol=1e-3, rtol=1e-3)
    result = {}
    for label, m in modules.items():
        with torch.no_grad():
            result[label, "fwd"] = best_of(lambda: m(**inputs), repeat)

        def train_step():
            sum(v.abs().square().mean() for v in outputs(m, inputs).values()).backward()
        result[label, "fwd+bwd"] = best_of(train_step, repeat)
        result[label, "peak"] = peak_memory(training_step(name, hypers, batch, T, label))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, T={args.T}, float32")
    print(f"{'cell':<10}{'B':>3}  {'pass':<8}{'sequential':>11}{'scan':>10}{'fft':>10}"
          f"{'scan/seq':>10}{'fft/seq':>9}   peak MiB seq/scan/fft")
    for name, hypers, batch in CASES:
        r = run(name, hypers, batch, args.T, args.repeat)
        for what in ("fwd", "fwd+bwd"):
            seq = r["sequential", what]
            times = [f"{r[b, what] * 1e3:>8.1f}ms" if (b, what) in r else f"{'-':>10}"
                     for b in PARALLEL]
            ups = [f"{seq / r[b, what]:>8.1f}x" if (b, what) in r else f"{'-':>9}"
                   for b in PARALLEL]
            mem = "/".join(f"{r[b, 'peak'] / 2**20:.0f}" if (b, "peak") in r else "-"
                           for b in ("sequential",) + PARALLEL) if what == "fwd+bwd" else ""
            print(f"{name:<10}{batch:>3}  {what:<8}{seq * 1e3:>9.1f}ms{''.join(times)}"
                  f"{ups[0]:>10}{ups[1]:>9}   {mem}")


if __name__ == "__main__":
    main()
