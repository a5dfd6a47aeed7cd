"""Time the scan backend against the sequential one, side by side, on the CPU.

    python benchmarks/scan_vs_sequential.py [--T 4096] [--repeat 3]

Forward and forward+backward, float32; prints milliseconds (best of --repeat) and the
speed-up of the scan. Both modules share parameters and inputs.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

import reclang
from reclang.timing import best_of

SPECS = Path(__file__).resolve().parent.parent / "specs"
CASES = [("min_gru", dict(D=64, N=128), 8), ("mamba_s6", dict(D=64, N=16, R=4), 4),
         ("hgrn", dict(D=256), 8), ("rg_lru", dict(D=128), 8)]


def run(name, hypers, batch, T, repeat):
    cell = reclang.load(SPECS / f"{name}.rec", **hypers)
    torch.manual_seed(0)
    sequential = cell.module("sequential")
    scan = cell.module("scan")
    scan.load_state_dict(sequential.state_dict())
    inputs = {d.name: torch.randn(batch, T, *d.shape) for d in cell.ir.inputs}
    if "g" in inputs:
        inputs["g"] = torch.nn.functional.logsigmoid(inputs["g"])
    inputs = {k: v.requires_grad_() for k, v in inputs.items()}
    result = {}
    for label, m in (("sequential", sequential), ("scan", scan)):
        with torch.no_grad():
            result[label, "fwd"] = best_of(lambda: m(**inputs), repeat)

        def train_step():
            y, _ = m(**inputs)
            (y if torch.is_tensor(y) else sum(y.values())).square().mean().backward()
        result[label, "fwd+bwd"] = best_of(train_step, repeat)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, T={args.T}, float32")
    print(f"{'cell':<10}{'B':>3}  {'pass':<8}{'sequential':>12}{'scan':>10}{'speed-up':>10}")
    for name, hypers, batch in CASES:
        r = run(name, hypers, batch, args.T, args.repeat)
        for what in ("fwd", "fwd+bwd"):
            seq, scan = r["sequential", what] * 1e3, r["scan", what] * 1e3
            print(f"{name:<10}{batch:>3}  {what:<8}{seq:>10.1f}ms{scan:>8.1f}ms{seq / scan:>9.1f}x")


if __name__ == "__main__":
    main()
