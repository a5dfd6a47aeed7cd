"""Train ParaRNN's GRU (specs/para_gru.rec) with the newton backend and with the
sequential loop, side by side: the same initial parameters and batches, float64; the
two loss curves are the same to rounding, because the newton backend solves the whole
sequence to the loop's states (and finishes step by step where Newton has not
converged) and differentiates the solution, not its iterations.

    python examples/newton_training.py [--steps 60] [--T 256] [--seed 0] [--threads 1]

The task: read a noisy signal and output, at every step, the sign of a leaky running
sum of it (a memory of about 20 steps). Prints both losses every few steps, the
largest relative difference between them, the Newton iterations of the last step and
each backend's time. Runs on the CPU in about 10-30 s. `--threads`: torch's intra-op
threads, 1 by default: the steps are small, and on a busy 2-core machine a second
thread per process mostly waits (BLAS threads spinning against other processes).
"""

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import reclang
from reclang.runtime import newton

SPEC = Path(__file__).resolve().parent.parent / "specs" / "para_gru.rec"


class Model(nn.Module):
    def __init__(self, backend: str, N: int = 16):
        super().__init__()
        self.cell = reclang.load(SPEC, D=1, N=N).module(backend).double()
        self.readout = nn.Linear(N, 1).double()

    def forward(self, x):
        h, _ = self.cell(x=x)
        return self.readout(h)[..., 0]


def batch(size: int, T: int, generator: torch.Generator):
    x = torch.randn(size, T, 1, generator=generator, dtype=torch.float64)
    total, targets = torch.zeros(size, dtype=torch.float64), []
    for t in range(T):
        total = 0.95 * total + x[:, t, 0]
        targets.append((total > 0).double())
    return x, torch.stack(targets, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--T", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {}
    for backend in ("sequential", "newton"):
        torch.manual_seed(args.seed)
        models[backend] = Model(backend)
    optimizers = {b: torch.optim.Adam(m.parameters(), lr=1e-2) for b, m in models.items()}
    data = torch.Generator().manual_seed(args.seed)
    times = dict.fromkeys(models, 0.0)
    worst = 0.0
    print(f"{'step':>5}  {'sequential':>12}  {'newton':>12}")
    for step in range(1, args.steps + 1):
        x, y = batch(16, args.T, data)
        losses = {}
        for backend, model in models.items():
            start = time.perf_counter()
            loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
            optimizers[backend].zero_grad()
            loss.backward()
            optimizers[backend].step()
            times[backend] += time.perf_counter() - start
            losses[backend] = loss.item()
        worst = max(worst, abs(losses["newton"] - losses["sequential"]) / losses["sequential"])
        if step == 1 or step % 10 == 0 or step == args.steps:
            print(f"{step:>5}  {losses['sequential']:>12.8f}  {losses['newton']:>12.8f}")
    print(f"largest relative difference between the two loss curves: {worst:.1e}")
    print(f"newton, last step: {newton.last_report}")
    print(", ".join(f"{b}: {t:.1f} s" for b, t in times.items()) + f" for {args.steps} steps "
          f"(B = 16, T = {args.T}, N = 16)")
    assert worst < 1e-8, "the loss curves differ by more than rounding"


if __name__ == "__main__":
    main()
