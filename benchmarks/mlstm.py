"""mLSTM: the chunk backend for specs/mlstm.rec against mlstm_kernels' native PyTorch
chunkwise form (issue 25), side by side in one process on the CPU.

    python benchmarks/mlstm.py [--T 1024 4096] [--B 8] [--repeat 3] [--chunk 64]
                               [--threads 1] [--clock cpu|wall] [--baseline CHECKOUT]

mlstm_kernels (NX-AI, `pip install --no-deps mlstm-kernels einops`) is not a dependency
of reclang: without it the script says so and stops. Its `mlstm_chunkwise__native_custbw`
(the chunkwise forward with its hand-written backward) is timed, and, for reference,
`mlstm_chunkwise__native_autograd` (the same forward under autograd).

The two cells compute the same h̃_t = q_tᵀ C_t / max(|q_tᵀ n_t|, 1) (scale K^-1/2,
sigmoid forget gate, exponential input gate), but:
- ours is unstabilized (C and n themselves), theirs keeps C and n times exp(-m_t) with a
  running max m_t and divides by max(|q·ñ|, exp(-m)) + eps (eps = 1e-6): the outputs
  agree up to eps·exp(m) relative, unless exp(i) overflows ours (ĩ of about 88 in
  float32), which theirs survives;
- their backward treats the denominator as a constant ("it cancels out in the
  groupnorm" after the cell), ours is the exact gradient. The gradients agree where
  the denominator is the bound 1, i.e. |scale·q·n| < 1 at every step: the inputs below
  keep ĩ near -3 so that the normalizer stays small, and the script checks that the
  bound holds, then compares outputs, final states and gradients (float64) before
  anything is timed.
Inputs come in each one's own layout ([B, T, H, K] ours, [B, H, T, K] theirs), made
before timing. Times are the best of --repeat, float32, in milliseconds; with `--clock
cpu` (the default) of the process's CPU time, with one intra-op thread (--threads 1, the
default), as benchmarks/cpu.py --clock cpu.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

import reclang
from reclang import timing
from reclang.timing import load_average

SPECS = Path(__file__).resolve().parent.parent / "specs"
H, K = 4, 64
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["cpu"]


def best_of(fn, repeat: int) -> float:
    fn()  # warm up: the generated module's first call loads its code
    return timing.best_of(fn, repeat, clock)


def theirs():
    """mlstm_kernels' two native chunkwise functions, or None when it is not installed."""
    try:
        from mlstm_kernels.torch.chunkwise.native import (
            mlstm_chunkwise__native_autograd,
            mlstm_chunkwise__native_custbw,
        )
    except ImportError as e:
        print(f"mlstm_kernels is not installed ({e}); it is not a dependency of reclang:\n"
              "    pip install --no-deps mlstm-kernels einops", file=sys.stderr)
        return None
    return {"custbw": mlstm_chunkwise__native_custbw,
            "autograd": mlstm_chunkwise__native_autograd}






def inputs(B: int, T: int, dtype) -> dict:
    """q, k, v [B, T, H, K]; ĩ [B, T, H] near -3 (a small normalizer: the denominator is
    the bound 1, where both backwards are the same gradient); f̃ near 3 (forget ≈ 0.95)."""
    g = torch.Generator().manual_seed(0)
    x = {n: torch.randn(B, T, H, K, generator=g, dtype=dtype) for n in "qkv"}
    x["i"] = torch.randn(B, T, H, generator=g, dtype=dtype) * 0.5 - 3
    x["f"] = torch.randn(B, T, H, generator=g, dtype=dtype) + 3
    return x


def ours_fn(x: dict, chunk: int):
    cell = reclang.load(SPECS / "mlstm.rec", H=H, K=K, V=K)
    m = cell.module("chunk", chunk_size=chunk).to(x["q"].dtype)
    return lambda: m(**x)  # -> (o [B, T, H, V], {"S": .., "n": ..})


def baseline_fn(x: dict, chunk: int, checkout: Path):
    """ours_fn with `_chunkwise` from another checkout's reclang/runtime/chunk.py (for a
    before/after in one process; its imports resolve to this checkout's modules)."""
    import importlib.util

    import reclang.runtime.chunk as current
    spec = importlib.util.spec_from_file_location(
        "reclang.runtime.chunk_baseline", checkout / "reclang" / "runtime" / "chunk.py")
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    ours = ours_fn(x, chunk)

    def run():
        mine, current._chunkwise = current._chunkwise, base._chunkwise
        try:
            return ours()
        finally:
            current._chunkwise = mine
    return run


def their_fn(fn, x: dict, chunk: int):
    """fn on x in its layout ([B, H, T, ...], contiguous, made here, before timing)."""
    y = {n: t.detach().transpose(1, 2).contiguous().requires_grad_(t.requires_grad)
         for n, t in x.items()}
    return y, lambda: fn(y["q"], y["k"], y["v"], y["i"], y["f"], return_last_states=True,
                         chunk_size=chunk)


def check(kernels: dict, chunk: int) -> str:
    """Outputs, final states and the gradients of q, k, v, ĩ, f̃ of both, float64, over
    three chunks (theirs takes whole chunks only); raises if they differ. Returns a summary."""
    x = {n: t.requires_grad_() for n, t in inputs(2, 3 * chunk, torch.float64).items()}
    (o, states), (y, run) = ours_fn(x, chunk)(), their_fn(kernels["custbw"], x, chunk)
    h, (C, n, m) = run()
    den = (K ** -0.5 * torch.einsum("bthk,bthk->bth", x["q"], _normalizers(x))).abs()
    assert den.max() < 1, f"the denominator leaves the bound 1 ({den.max():.3g})"
    # their states are ours times exp(-m)
    errors = {"o": _rel(o, h.transpose(1, 2)), "S": _rel(states["S"], C * m.exp()[..., None]),
              "n": _rel(states["n"], n * m.exp())}
    dh = torch.randn_like(o)
    grads = torch.autograd.grad(o, list(x.values()), dh)
    their = torch.autograd.grad(h, list(y.values()), dh.transpose(1, 2))
    for name, a, b in zip(x, grads, their):
        errors[f"d{name}"] = _rel(a, b.transpose(1, 2))
    worst = max(errors.values())
    assert worst < 1e-5, errors
    return (f"agree (float64, B=2, T={3 * chunk}; max |scale·q·n| = {den.max():.2f} < 1): "
            f"largest relative difference {worst:.1e} (eps = 1e-6 in theirs)")


def _normalizers(x: dict) -> torch.Tensor:
    """n_t at every step (the loop), for the check of the denominator's bound."""
    n, out = torch.zeros_like(x["k"][:, 0]), []
    for t in range(x["k"].shape[1]):
        n = torch.sigmoid(x["f"][:, t, :, None]) * n + x["i"][:, t, :, None].exp() * x["k"][:, t]
        out.append(n)
    return torch.stack(out, 1).detach()


def _rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def rows(kernels: dict, B: int, T: int, chunk: int, repeat: int, baseline=None):
    """(label, forward ms, forward+backward ms) for ours and theirs at one size."""
    x = {n: t.requires_grad_() for n, t in inputs(B, T, torch.float32).items()}
    ours = ours_fn(x, chunk)
    runs = {"chunk": (ours, lambda r: r[0], x)}
    if baseline is not None:
        runs["chunk (baseline)"] = (baseline_fn(x, chunk, baseline), lambda r: r[0], x)
    for name, fn in kernels.items():
        y, run = their_fn(fn, x, chunk)
        runs[f"mlstm_kernels {name}"] = (run, lambda r: r[0], y)
    with torch.no_grad():  # same outputs in float32 at this size
        ref = runs["mlstm_kernels custbw"][0]()[0].transpose(1, 2)
        err = _rel(ours()[0], ref)
    dh = torch.randn(B, T, H, K)
    out = []
    for label, (run, first, leaves) in runs.items():
        grad = dh if label.startswith("chunk") else dh.transpose(1, 2).contiguous()
        with torch.no_grad():
            fwd = best_of(run, repeat)
        both = best_of(lambda: torch.autograd.backward(first(run()), grad), repeat)
        for t in leaves.values():
            t.grad = None
        out.append((label, fwd * 1e3, both * 1e3))
    return out, err


def main() -> int:
    global clock
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--B", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=64, help="both sides' chunk size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCK), default="cpu")
    parser.add_argument("--baseline", type=Path, help="another checkout (e.g. main's): "
                        "also time its chunkwise form, in this process")
    args = parser.parse_args()
    clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)
    kernels = theirs()
    if kernels is None:
        return 1
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, {args.clock} clock, B={args.B}, H={H}, K=V={K}, "
          f"chunk={args.chunk}, float32; {load_average()}")
    print(check(kernels, args.chunk))
    print(f"{'T':>6}  {'':<24}{'fwd ms':>9}{'f+b ms':>9}{'fwd ratio':>11}{'f+b ratio':>11}"
          "   (ratio: time / mlstm_kernels custbw's)")
    for T in args.T:
        out, err = rows(kernels, args.B, T, args.chunk, args.repeat, args.baseline)
        ref = next(r for r in out if r[0] == "mlstm_kernels custbw")
        for label, fwd, both in out:
            print(f"{T:>6}  {label:<24}{fwd:>9.1f}{both:>9.1f}{fwd / ref[1]:>11.2f}"
                  f"{both / ref[2]:>11.2f}")
        print(f"        outputs agree in float32 to {err:.1e} (relative); {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
