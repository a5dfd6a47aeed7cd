"""A character-level language model on text every machine has: the Python standard
library's own source files. An embedding, a `reclang.nn.Stack` of any catalogue cell,
and a linear head predict the next byte; the score is bits per character on held-out
files (the sources are ASCII but for a few comments: one byte is one character).

    python examples/char_lm.py --cell specs/gru.rec [--layers 2] [--width 64]
                               [--steps 600] [--quick] [--plot loss.png]
    python examples/char_lm.py --compare specs/lstm.rec specs/gru.rec --params 100000

The corpus is a fixed list of files of `sysconfig.get_paths()["stdlib"]` (TRAIN and
HELD_OUT below; their text varies a little between Python versions). Training draws
random windows of --seq bytes from the training files; the held-out score reads the
first --eval-bytes of each held-out file in consecutive windows.

Cells with one input x[D] and one output (LSTM, GRU, minGRU, Mamba S6, the Odyssey
LSTMs, ...) are stacked as they are, with D (and N) set to --width. Cells with other
inputs (GLA: q, k, v, g; DeltaNet: q, k, v, beta; ...) get a linear projection of the
layer's input for each, passed through the activation fla's layers give it (a log
gate g: logsigmoid / 16; beta: sigmoid; keys: unit norm), and a projection of their
output back to --width, with a residual connection.

--quick: a short run (about a minute alone on a 2-core CPU) for a first look.
"""

from __future__ import annotations

import argparse
import math
import sys
import sysconfig
import time
from pathlib import Path

import torch
from torch import nn

import reclang
from reclang.nn import Stack

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["argparse.py", "collections/__init__.py", "dataclasses.py", "functools.py",
         "inspect.py", "pathlib.py", "subprocess.py", "textwrap.py", "typing.py",
         "tokenize.py", "string.py", "shutil.py"]
HELD_OUT = ["heapq.py", "bisect.py", "fractions.py", "calendar.py"]
VOCAB = 256  # bytes
F = nn.functional
ACTIVATIONS = {  # fla's layers: the gates and keys the recurrences expect
    "g": lambda x: F.logsigmoid(x) / 16, "gk": lambda x: F.logsigmoid(x) / 16,
    "beta": torch.sigmoid, "k": lambda x: F.normalize(x, dim=-1)}


def corpus(names: list[str]) -> torch.Tensor:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    data = b"\n".join((stdlib / name).read_bytes() for name in names)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


class Projected(nn.Module):
    """A cell whose inputs are projections of a [B, T, width] sequence, its output
    projected back, plus the input (residual); RecModule's calling convention."""

    input_names, output_names = ["x"], ["y"]

    def __init__(self, cell, width: int, backend: str, device=None):
        super().__init__()
        self.cell = cell.module(backend, device=device)
        self.shapes = {d.name: d.shape for d in cell.ir.inputs}
        self.ins = nn.ModuleDict({k: nn.Linear(width, math.prod(s), bias=k in ACTIVATIONS,
                                               device=device)
                                  for k, s in self.shapes.items()})
        out = cell.ir.outputs[0]
        self.out = nn.Linear(math.prod(out.sizes), width, device=device)

    def _inputs(self, x):
        return {k: ACTIVATIONS.get(k, lambda v: v)(p(x).unflatten(-1, self.shapes[k]))
                for k, p in self.ins.items()}

    def forward(self, *, x, state=None, lengths=None, cu_seqlens=None):
        y, state = self.cell(state=state, **self._inputs(x))
        return x + self.out(y.flatten(2)), state

    def step(self, *, x, state=None):
        y, state = self.cell.step(state=state, **self._inputs(x))
        return x + self.out(y.flatten(1)), state


def sized(path: str, width: int):
    """The cell at `width`, and whether it is stacked as it is: a one-input cell gets
    D = width, and N = width when its output is [N] (LSTM, GRU; Mamba's y[D] keeps its
    state size N); others get K = V = width / H (heads of the projected layer)."""
    cell = reclang.load(path)
    if len(cell.ir.inputs) == 1 and len(cell.ir.outputs) == 1:
        cell = reclang.load(path, D=width)
        if cell.ir.outputs[0].sizes != (width,):
            cell = reclang.load(path, D=width, N=width)
        return cell, True
    heads = cell.hypers.get("H", 1)
    return reclang.load(path, **{k: max(1, width // heads) for k in ("K", "V")
                                 if k in cell.hypers}), False


def width_for(path: str, layers: int, params: int) -> int:
    """The width (a multiple of 8) whose model has the parameter count closest to
    `params`, by bisection (the count grows with the width): models of different cells
    compared at the same size."""
    def count(width):
        model = CharLM(path, layers, width, "sequential", device="meta")
        return sum(p.numel() for p in model.parameters())
    low, high = 1, 64  # in units of 8
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if count(8 * mid) < params else (low, mid)
    return min((8 * max(1, low - 1), 8 * low), key=lambda w: abs(count(w) - params))


class CharLM(nn.Module):
    def __init__(self, path: str, layers: int, width: int, backend: str = "auto",
                 device=None):
        super().__init__()
        cell, single = sized(path, width)
        self.embed = nn.Embedding(VOCAB, width, device=device)
        factory = cell if single else (lambda i: Projected(cell, width, backend, device))
        self.stack = Stack(factory, layers, backend=backend, device=device)
        self.head = nn.Linear(width, VOCAB, device=device)

    def forward(self, tokens):
        y, _ = self.stack(x=self.embed(tokens))
        return self.head(y)


def batches(data: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    while True:
        start = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        window = torch.stack([data[s:s + seq + 1] for s in start.tolist()])
        yield window[:, :-1], window[:, 1:]


@torch.no_grad()
def bits_per_char(model: CharLM, data: list[torch.Tensor], seq: int) -> float:
    """Mean next-byte cross-entropy in bits over consecutive windows of each file."""
    model.eval()
    total, count = 0.0, 0
    for text in data:
        n = (len(text) - 1) // seq * seq
        x, y = text[:n].reshape(-1, seq), text[1:n + 1].reshape(-1, seq)
        logits = model(x)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count / math.log(2)


def progress(step: int, steps: int, loss: float, started: float, width: int = 30) -> None:
    done = step * width // steps
    rate = step / max(time.perf_counter() - started, 1e-9)
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{steps} "
                     f"loss {loss:.3f} ({loss / math.log(2):.2f} bits) {rate:.1f} steps/s")
    if step == steps:
        sys.stderr.write("\n")
    sys.stderr.flush()


def train(args) -> dict:
    """Trains and evaluates; returns the curves: train (step, bits) and held-out ones."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = CharLM(args.cell, args.layers, args.width, args.backend)
    params = sum(p.numel() for p in model.parameters())
    print(f"{Path(args.cell).stem}: {args.layers} layers of width {args.width}, "
          f"{params:,} parameters, backend {args.backend}")
    data = corpus(TRAIN)
    held = [t[:args.eval_bytes] for t in (corpus([name]) for name in HELD_OUT)]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps,
                                                   pct_start=0.1)
    curves = {"train": [], "held_out": [(0, bits_per_char(model, held, args.seq))]}
    started = time.perf_counter()
    for step, (x, y) in enumerate(batches(data, args.batch, args.seq, gen), 1):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        curves["train"].append((step, loss.item() / math.log(2)))
        if args.progress:
            progress(step, args.steps, loss.item(), started)
        if step % args.eval_every == 0 or step == args.steps:
            curves["held_out"].append((step, bits_per_char(model, held, args.seq)))
        if step == args.steps:
            break
    seconds = time.perf_counter() - started
    print(f"held-out bits per character: {curves['held_out'][-1][1]:.3f} after {args.steps} "
          f"steps ({seconds:.0f} s; {len(data):,} training bytes, "
          f"{sum(map(len, held)):,} held-out)")
    curves.update(params=params, seconds=seconds)
    return curves


def plot(curves: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps, bits = zip(*curves["train"])
    window = max(1, len(bits) // 30)  # a running mean: one batch is noisy
    smooth = [sum(bits[max(0, i - window + 1):i + 1]) / len(bits[max(0, i - window + 1):i + 1])
              for i in range(len(bits))]
    ax.plot(steps, smooth, label="train (running mean)")
    ax.plot(*zip(*curves["held_out"]), "o-", label="held-out")
    ax.set(xlabel="step", ylabel="bits per character", title=title)
    _save(fig, ax, path)


def _save(fig, ax, path):
    """A figure with a grid and a legend, written to `path` and closed."""
    from matplotlib import pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", default=str(ROOT / "specs" / "gru.rec"))
    p.add_argument("--compare", nargs="+", metavar="CELL",
                   help="train each of these cells in turn; a table, and --plot of all")
    p.add_argument("--params", type=int,
                   help="choose the width whose model has about this many parameters")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-bytes", type=int, default=20000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--backend", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the loop's small steps gain nothing "
                   "from more, and on a busy machine two threads ran a step 18x slower)")
    p.add_argument("--plot", help="write the loss curves to this .png")
    p.add_argument("--quick", action="store_true",
                   help="a short run: 200 steps of 16 x 64 bytes, 8 KB held-out per file")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


QUICK = {"steps": 200, "batch": 16, "seq": 64, "eval_bytes": 8000, "eval_every": 50}


def compare(args) -> dict:
    """Trains each of --compare's cells with the same steps, batch and data (and, with
    --params, the same parameter count); prints a Markdown table."""
    results = {}
    for path in args.compare:
        run = argparse.Namespace(**{**vars(args), "cell": path})
        if args.params:
            run.width = width_for(path, args.layers, args.params)
        results[Path(path).stem] = (run.width, train(run))
    print("\n| cell | width | parameters | held-out bits/char | seconds |\n|---|---|---|---|---|")
    for name, (width, c) in results.items():
        print(f"| {name} | {width} | {c['params']:,} | {c['held_out'][-1][1]:.3f} | "
              f"{c['seconds']:.0f} |")
    return results


def plot_comparison(results: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (_, curves) in results.items():
        ax.plot(*zip(*curves["held_out"][1:]), "o-", label=name)
    ax.set(xlabel="step", ylabel="held-out bits per character", title=title)
    _save(fig, ax, path)


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.quick:  # new defaults: what the command line gives still wins
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if args.compare:
        results = compare(args)
        if args.plot:
            plot_comparison(results, args.plot, f"{args.layers} layers, {args.steps} steps of "
                            f"{args.batch} x {args.seq} bytes, ~{args.params or 0:,} params")
            print(f"wrote {args.plot}")
        return results
    if args.params:
        args.width = width_for(args.cell, args.layers, args.params)
    curves = train(args)
    if args.plot:
        plot(curves, args.plot, f"{Path(args.cell).stem}, {args.layers} x {args.width}")
        print(f"wrote {args.plot}")
    return curves


if __name__ == "__main__":
    main()
