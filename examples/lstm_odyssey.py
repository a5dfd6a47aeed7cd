"""A reduced "LSTM: A Search Space Odyssey" (Greff et al., 2017): the nine variants of
specs/lstm_odyssey_*.rec trained on char_lm.py's task (the standard library's sources,
held-out bits per character), a few seeds each, at the same width and budget.

    python examples/lstm_odyssey.py [--seeds 2] [--steps 150] [--width 48]

The paper (5400 runs, three tasks, hyperparameters searched per variant) found no
variant significantly better than the vanilla LSTM, and the forget gate (NFG) and the
output activation (NOAF) the most critical components. This run is far smaller: one
task, no search, short training; it prints each variant's mean and spread over the
seeds and Welch's t statistic against vanilla, so that one can see whether it agrees.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import char_lm

VARIANTS = {"vanilla": "vanilla", "nig": "no input gate", "nfg": "no forget gate",
            "nog": "no output gate", "niaf": "no input activation",
            "noaf": "no output activation", "np": "no peepholes", "cifg": "coupled i/f gates",
            "fgr": "full gate recurrence"}


def welch(a: list[float], b: list[float]) -> float:
    """Welch's t of mean(a) - mean(b); inf where both spreads are 0."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.mean(a) - statistics.mean(b)
    return diff / (va + vb) ** 0.5 if va + vb > 0 else float("inf") * (diff or 1)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--width", type=int, default=48)
    args = p.parse_args(argv)
    specs = char_lm.ROOT / "specs"
    scores: dict[str, list[float]] = {}
    for name in VARIANTS:
        for seed in range(args.seeds):
            run = char_lm.parser().parse_args([
                "--cell", str(specs / f"lstm_odyssey_{name}.rec"), "--width", str(args.width),
                "--steps", str(args.steps), "--seed", str(seed), "--no-progress",
                *[f"--{k.replace('_', '-')}={v}" for k, v in char_lm.QUICK.items()
                  if k != "steps"]])
            curves = char_lm.train(run)
            scores.setdefault(name, []).append(curves["held_out"][-1][1])
    base = scores["vanilla"]
    print(f"\n{args.seeds} seeds, {args.steps} steps, width {args.width}\n")
    print("| variant | | held-out bits/char (mean ± sd) | t vs vanilla |\n|---|---|---|---|")
    for name, values in sorted(scores.items(), key=lambda kv: statistics.mean(kv[1])):
        t = "" if name == "vanilla" or args.seeds < 2 else f"{welch(values, base):+.1f}"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {name} | {VARIANTS[name]} | {statistics.mean(values):.3f} ± {sd:.3f} | {t} |")
    return scores


if __name__ == "__main__":
    main()
