"""The cost of a width-4 causal convolution written with lag, next to the recurrence, on
the CPU: Mamba's S6 scan (specs/mamba_s6.rec) alone and with the convolution and SiLU
that the Mamba block runs before it, side by side, as ratios.

    python benchmarks/lag_conv.py [--T 1024] [--B 4] [--repeat 5]

Forward and forward+backward, float32, on the sequential and scan backends, in CPU time
of one thread (best of --repeat, ms: on a shared machine wall-clock times varied tenfold
between runs, while the process's own CPU time did not). The last rows time the
convolution alone: the cell's prologue, which computes sum(w: Wconv[d, w] * lag(x[d], w))
(reclang/codegen/prologue.py: one depthwise conv1d over x after its history), the window
of lags contracted with the weights (what the prologue printed before: an unfold of the
same sequence flipped into offset order, then an einsum), and PyTorch's depthwise
F.conv1d on the same input, the way a hand-written Mamba block computes it.
The script first checks that the three spellings of the convolution agree.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import reclang
from reclang.runtime import lag
from reclang.timing import best_of as _best_of

SPECS = Path(__file__).resolve().parent.parent / "specs"
HYPERS = {"D": 64, "N": 16, "R": 4}
W = 4
CONV = f"""    param Wconv[D, {W}] ~ uniform(-0.5, 0.5)
    xc[d] = silu(sum(w: Wconv[d, w] * lag(x[d], w)))
"""


def best_of(fn, repeat: int) -> float:
    """The least CPU time of this process over `repeat` runs of fn(), in seconds."""
    return _best_of(fn, repeat, time.process_time)


def with_conv(text: str) -> str:
    """mamba_s6.rec with the causal convolution before it: every read of x becomes one
    of the convolved xc."""
    lines = text.splitlines(keepends=True)
    first = next(k for k, line in enumerate(lines) if line.strip().startswith("dt["))
    body = "".join(lines[first:]).replace("x[", "xc[")
    return "".join(lines[:first]) + CONV + body


def modules(B: int, T: int):
    text = (SPECS / "mamba_s6.rec").read_text()
    plain = reclang.loads(text, "mamba_s6.rec", **HYPERS)
    conv = reclang.loads(with_conv(text), "mamba_conv.rec", **HYPERS)
    assert plain.plan.form == conv.plan.form == "diag"  # the plan is unchanged
    torch.manual_seed(0)
    x = torch.randn(B, T, HYPERS["D"], requires_grad=True)
    return {(kind, backend): cell.module(backend) for kind, cell in
            (("plain", plain), ("conv", conv)) for backend in ("sequential", "scan")}, x


def prologue_conv(m, x, history):
    """The convolution as the cell's prologue computes it: sum(w: Wconv * lag(x, w))."""
    derived, _ = m._prologue[2].prologue(x, history, None, **dict(m.named_parameters()))
    (conv,) = derived.values()                             # [B, T, D]
    return conv


def check_conv(m, x):
    """The prologue's convolution equals a depthwise causal F.conv1d."""
    history = torch.zeros(x.shape[0], W - 1, x.shape[2])
    torch.testing.assert_close(prologue_conv(m, x, history), depthwise(x, m.Wconv),
                               atol=1e-5, rtol=1e-5)


def depthwise(x, weight):
    """Σ_w weight[d, w] x[t - w, d] with zeros before the start, as F.conv1d."""
    kernel = weight.flip(-1)[:, None, :]                   # [D, 1, W], oldest first
    padded = torch.nn.functional.pad(x.transpose(1, 2), (W - 1, 0))
    return torch.nn.functional.conv1d(padded, kernel, groups=x.shape[2]).transpose(1, 2)


def windowed(x, weight, history):
    """The same sum over the window of lags: W copies of x, then an einsum."""
    extended = lag.extend(history, x, x.shape[1])
    return torch.einsum("...dw,...dw->...d", weight, lag.window(extended, W, x.shape[1]))




def timings(ms: dict, x, repeat: int) -> dict:
    result = {}
    for key, m in ms.items():
        with torch.no_grad():
            result[key, "fwd"] = best_of(lambda m=m: m(x=x), repeat)
        result[key, "fwd+bwd"] = best_of(lambda m=m: m(x=x)[0].square().mean().backward(),
                                          repeat)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=1024)
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ms, x = modules(args.B, args.T)
    conv = ms["conv", "sequential"]
    check_conv(conv, x)
    history = torch.zeros(args.B, W - 1, HYPERS["D"])
    torch.testing.assert_close(windowed(x, conv.Wconv, history), depthwise(x, conv.Wconv),
                               atol=1e-5, rtol=1e-5)
    result = timings(ms, x, args.repeat)
    print(f"machine: {platform.machine()}, 1 thread (CPU time), torch "
          f"{torch.__version__}, B={args.B}, T={args.T}, D={HYPERS['D']}, N={HYPERS['N']}, "
          f"W={W}, float32, best of {args.repeat}")
    print(f"{'backend':<11} {'pass':<8} {'S6':>10} {'conv + S6':>10} {'ratio':>6}")
    for backend in ("sequential", "scan"):
        for step in ("fwd", "fwd+bwd"):
            a, b = result[("plain", backend), step], result[("conv", backend), step]
            print(f"{backend:<11} {step:<8} {a * 1e3:>8.1f}ms {b * 1e3:>8.1f}ms {b / a:>5.2f}x")
    for step in ("fwd", "fwd+bwd"):
        grad = step == "fwd+bwd"

        def prologue(grad=grad):
            y = prologue_conv(conv, x, history)
            if grad:
                y.square().mean().backward()

        def hand(grad=grad):
            y = depthwise(x, conv.Wconv)
            if grad:
                y.square().mean().backward()

        def window(grad=grad):
            y = windowed(x, conv.Wconv, history)
            if grad:
                y.square().mean().backward()
        with torch.set_grad_enabled(grad):
            ours, theirs = best_of(prologue, args.repeat), best_of(hand, args.repeat)
            einsum = best_of(window, args.repeat)
        print(f"conv alone  {step:<8} prologue {ours * 1e3:.2f}ms ({ours / theirs:.1f}x), "
              f"window + einsum {einsum * 1e3:.2f}ms ({einsum / theirs:.1f}x), F.conv1d "
              f"{theirs * 1e3:.2f}ms (1x)")


if __name__ == "__main__":
    main()
