"""CPU benchmarks of issue 25, in one run: each backend against torch.nn (LSTM, GRU, RNN),
against the PyTorch loop, and against this machine's limits (copy bandwidth, matmul
rate), with the load of the machine beside the figures.

    python benchmarks/cpu.py [--quick] [--repeat 3] [--threads N] [--clock cpu]
                             [--only rnn|diag|auto] [--cells NAME ...]

Timings are the best of `repeat` runs, float32, side by side in one process; with
`--clock cpu`, of the process's CPU time (time.process_time) instead of the wall clock:
with one thread on a machine others load, that leaves out the time spent waiting for a
core (multithreaded torch ops spin, so use it with --threads 1). `auto` is what
cell.module("auto") runs (reclang/cost/); `--only auto` times every backend auto may
choose beside auto, which measures them itself on its first call of each size. For the
kernels the fraction of a limit is: diagonal scans, the bytes the compiled loop must
move (its operands read, its outputs written) over its time, against the copy bandwidth
into an existing buffer and into a fresh tensor in huge pages (the kernel's outputs are
fresh tensors, for which it asks huge pages); nonlinear cells, the recurrent matmuls'
FLOPs over the whole forward's time, against the matmul rate.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import sys
import time
from pathlib import Path

import torch

import reclang
from reclang import timing
from reclang.timing import load_average

CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def best_of(fn, repeat: int) -> float:
    return timing.best_of(fn, repeat, clock)


SPECS = Path(__file__).resolve().parent.parent / "specs"
NN = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}
RNN_SHAPES = [(4, 2048, 64), (16, 512, 128), (8, 1024, 256)]  # (B, T, N), D = N
DIAG = [("min_gru", {"D": 512, "N": 512}, 8), ("hgrn", {"D": 512}, 8),
        ("rg_lru", {"D": 512}, 8), ("mamba_s6", {"D": 512}, 2)]  # (spec, hypers, B)






def huge_pages(t: torch.Tensor) -> torch.Tensor:
    """`t` with madvise(MADV_HUGEPAGE) on the whole 2 MiB pages inside it, before its
    first write: what the cpu kernel does for its outputs (cpu_loop.cpp.jinja)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = 2 << 20
    first = (t.data_ptr() + page - 1) & ~(page - 1)
    last = (t.data_ptr() + t.numel() * t.element_size()) & ~(page - 1)
    if sys.platform == "linux" and last > first:
        libc.madvise(first, last - first, 14)  # MADV_HUGEPAGE
    return t


def limits(repeat: int) -> tuple[float, float, float, float]:
    """(copy bandwidth in GB/s, bytes read + written: into an existing buffer; into a
    fresh tensor as an op's output is, whose pages the OS maps on first write (4 KiB
    each); into a fresh tensor in huge pages, as the cpu kernel writes its outputs;
    matmul GFLOP/s), float32."""
    x = torch.randn(64 * 2 ** 20)
    y = torch.empty_like(x)
    copy = best_of(lambda: y.copy_(x), repeat)
    fresh = best_of(lambda: x.clone(), repeat)
    huge = best_of(lambda: huge_pages(torch.empty_like(x)).copy_(x), repeat)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm = best_of(lambda: a @ b, repeat)
    moved = 2 * x.numel() * 4 / 1e9
    return moved / copy, moved / fresh, moved / huge, 2 * 2048 ** 3 / mm / 1e9


def timed(fn, xs: dict, repeat: int) -> tuple[float, float]:
    """(forward, forward+backward) in ms of fn(**xs) -> a tensor."""
    with torch.no_grad():
        fn(**xs)
        forward = best_of(lambda: fn(**xs), repeat)
    leaves = {k: v.detach().requires_grad_() for k, v in xs.items()}

    def both():
        fn(**leaves).sum().backward()
    both()
    return forward * 1e3, best_of(both, repeat) * 1e3


def auto_label(m) -> str:
    """`auto=<what it ran>`: the backends it measured and chose for these sizes (forward,
    forward+backward), else the static ranking's."""
    chosen = sorted({c.backend for c in m._auto.chosen.values()}) if m._auto else []
    return "auto=" + "/".join(chosen or [m.backend])


def first(y) -> torch.Tensor:
    return y if torch.is_tensor(y) else next(iter(y.values()))


def rnn_rows(repeat: int, quick: bool, gflops: float):
    print("\n## Nonlinear cells against torch.nn (float32; ms; ratio = ours / torch.nn)")
    print(f"{'cell':7s} {'B':>3s} {'T':>5s} {'N':>4s} {'backend':10s} {'fwd':>8s} "
          f"{'nn fwd':>8s} {'ratio':>6s} {'fwd+bwd':>8s} {'nn f+b':>8s} {'ratio':>6s} "
          f"{'matmul %':>8s}")
    for name, layer in NN.items():
        for B, T, N in RNN_SHAPES:
            T = min(T, 128) if quick else T
            torch.manual_seed(0)
            cell = reclang.load(SPECS / f"{name}.rec", D=N, N=N)
            x = {"x": torch.randn(B, T, N)}
            nn = layer(N, N, batch_first=True)
            ref = timed(lambda x, nn=nn: nn(x)[0], x, repeat)
            for backend in ("cpu", "sequential", "auto"):
                m = cell.module(backend)
                fwd, both = timed(lambda m=m, **v: first(m(**v)[0]), x, repeat)
                label = backend if backend != "auto" else auto_label(m)
                flops = 2 * B * T * N * N * len(cell.form("cpu").lanes.weights)
                print(f"{name:7s} {B:3d} {T:5d} {N:4d} {label:10s} {fwd:8.1f} {ref[0]:8.1f} "
                      f"{fwd / ref[0]:6.2f} {both:8.1f} {ref[1]:8.1f} {both / ref[1]:6.2f} "
                      f"{100 * flops / (fwd * 1e-3) / 1e9 / gflops:7.1f}%")
        sys.stdout.flush()


def kernel_ms(m, xs: dict, repeat: int):
    """The compiled loop's own forward time: fused_loop on the operands forward made."""
    generated = m._generated
    seen = {}
    original = generated.fused_loop

    def keep(*args):
        seen["args"] = args
        return original(*args)
    generated.fused_loop = keep
    try:
        with torch.no_grad():
            m(**xs)
    finally:
        generated.fused_loop = original
    args = seen["args"]
    with torch.no_grad():
        return best_of(lambda: original(*args), repeat) * 1e3, args


def diag_rows(repeat: int, quick: bool, bandwidth: float, huge: float):
    print("\n## Diagonal cells, forward (float32; ms; vs loop = loop time / ours; "
          "kernel: the compiled loop alone, its operands read and outputs written against "
          "the copy into an existing buffer and into a fresh one in huge pages)")
    print(f"{'cell':9s} {'B':>2s} {'T':>5s} {'backend':14s} {'fwd':>8s} {'vs loop':>7s} "
          f"{'f+b':>8s} {'kernel':>8s} {'GB/s':>6s} {'of copy':>7s} {'of fresh':>8s}")
    for name, hypers, B in DIAG:
        T = 256 if quick else 4096
        torch.manual_seed(0)
        cell = reclang.load(SPECS / f"{name}.rec", **hypers)
        x = {d.name: torch.randn(B, T, *d.shape) for d in cell.ir.inputs}
        times = {}
        for backend in ("sequential", "scan", "cpu", "auto"):
            if backend != "auto" and not cell.supports(backend):
                continue
            m = cell.module(backend)
            fwd, both = timed(lambda m=m, **v: first(m(**v)[0]), x, repeat)
            label = backend if backend != "auto" else auto_label(m)
            times[backend] = fwd
            extra = ""
            if backend == "cpu":
                ms, (parts, _, _, h0, *_) = kernel_ms(m, x, repeat)
                S, Y = h0.shape[0], len(cell.form("cpu").lanes.outputs)
                per_step = h0.numel() // S  # B·HEADS·N
                # read (the operands' parts [B, T, k, HEADS, N]), written; without a
                # backward the states stay in a buffer of two steps (in cache), not counted
                moved = 4 * (sum(x.numel() for x in parts) + parts[0].shape[1] * per_step * Y)
                rate = moved / ms / 1e6
                extra = (f"{ms:8.1f} {rate:6.1f} {100 * rate / bandwidth:6.0f}% "
                         f"{100 * rate / huge:7.0f}%")
            print(f"{name:9s} {B:2d} {T:5d} {label:14s} {fwd:8.1f} "
                  f"{times['sequential'] / fwd:7.2f} {both:8.1f} {extra}")
        sys.stdout.flush()


MATRIX = {"H": 4, "K": 64, "V": 64}
AUTO = DIAG + [(name, {"D": 128, "N": 128}, 8) for name in NN] + [
    (name, MATRIX, 8) for name in ("gla", "retnet", "mlstm", "delta_net", "gated_delta_net")]


def auto_rows(repeat: int, quick: bool, cells: list | None):
    """Each backend `auto` may choose on CPU tensors, timed beside `auto` itself, which
    measures on its first call of each size (reclang/cost/auto.py) in a fresh cache.
    `cells`: the names to run (None: all of AUTO)."""
    import tempfile

    os.environ.update(RECLANG_AUTO_MEASURE="1", RECLANG_AUTO_COMPILED="1",
                      RECLANG_CACHE=tempfile.mkdtemp(prefix="reclang-auto-"))
    print("\n## auto against the backends it chooses from (float32; ms; auto's pick in "
          "brackets; pick / best: the pick's time in the table over the fastest; auto / "
          "best: auto's own run over the fastest)")
    print(f"{'cell':16s} {'B':>2s} {'T':>5s} {'pass':7s} {'times (ms)':46s} {'auto':>7s} "
          f"{'pick':12s} {'pick/best':>9s} {'auto/best':>9s}")
    for name, hypers, B in AUTO:
        if cells is None or name in cells:
            auto_row(name, hypers, B, 256 if quick else 4096, repeat)


def auto_row(name: str, hypers: dict, B: int, T: int, repeat: int):
    from reclang.cost.auto import candidates
    torch.manual_seed(0)
    cell = reclang.load(SPECS / f"{name}.rec", **hypers)
    x = {d.name: torch.randn(B, T, *d.shape) for d in cell.ir.inputs}
    times = {}
    for backend in candidates(cell):
        m = cell.module(backend)
        times[backend] = timed(lambda m=m, **v: first(m(**v)[0]), x, repeat)
    auto = cell.module("auto")
    mine = timed(lambda **v: first(auto(**v)[0]), x, repeat)
    picks = {key.split("/")[-2]: c.backend for key, c in auto._auto.chosen.items()}
    for i, phase in enumerate(("fwd", "fwd+bwd")):
        best = min(t[i] for t in times.values())
        pick = picks.get(phase, auto.backend)
        row = ", ".join(f"{b} {t[i]:.1f}" for b, t in times.items())
        print(f"{name:16s} {B:2d} {T:5d} {phase:7s} {row:46s} {mine[i]:7.1f} "
              f"{'[' + pick + ']':12s} {times[pick][i] / best:9.2f} {mine[i] / best:9.2f}")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short sequences, a smoke run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=sorted(CLOCK), default="wall")
    parser.add_argument("--only", choices=("rnn", "diag", "auto"), default=None)
    parser.add_argument("--cells", nargs="+", default=None, help="--only auto: these cells")
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), platform.processor())
    print(f"# {cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, {args.clock} clock; {load_average()} (before)")
    bandwidth, fresh, huge, gflops = limits(args.repeat)
    print(f"limits: copy {bandwidth:.1f} GB/s (read + write, into an existing buffer; "
          f"{fresh:.1f} into a fresh tensor, {huge:.1f} into a fresh one in huge pages), "
          f"float32 matmul 2048³ {gflops:.1f} GFLOP/s")
    if args.only in (None, "rnn"):
        rnn_rows(args.repeat, args.quick, gflops)
    if args.only in (None, "diag"):
        diag_rows(args.repeat, args.quick, bandwidth, huge)
    if args.only in (None, "auto"):
        auto_rows(args.repeat, args.quick, args.cells)
    print(f"\n# {load_average()} (after)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
