"""Check and time reclang's backends on a CUDA GPU, in one run, and print the tables.

    python benchmarks/gpu.py [--only scan cells chunk lstm newton] [--quick] [--dry]

Sections (each checks its results before it times them):
  scan   the triton backend's diagonal-scan kernel on [B, T, S] float32 against the
         memory-bandwidth floor (bytes it must move / the measured bandwidth of a
         device-to-device copy), against the PyTorch chunked scan (scan backend) and
         against a PyTorch loop over time; forward and forward+backward.
  cells  whole diagonal cells (minGRU, RG-LRU, Mamba S6, LRU) on the sequential, scan
         and triton backends, float32, forward and forward+backward; for the first
         three, whose gates the triton backend computes in its gated scan, also the
         triton diagonal scan of materialized a and b ("plain"): what fusing pays.
  chunk  GLA and Gated DeltaNet, bf16, B·T = 32k tokens, H = 16, K = V = 128: reclang's
         chunk backend (PyTorch) and the triton backend (its chunk kernels, the WY
         form for Gated DeltaNet) against
         flash-linear-attention's chunk_gla / chunk_gated_delta_rule when fla is
         importable.
  lstm   reclang's LSTM on the sequential backend and on the triton backend (the fused
         loop) against torch.nn.LSTM (cuDNN).
  newton para_gru and indrnn (diagonal Jacobians), float32, over T: the newton backend
         with one Triton kernel per iteration against its PyTorch path (the scans of
         reclang/runtime/scan.py), the PyTorch loop (sequential) and the fused Triton
         loop (the triton backend); iterations to converge, forward and forward+backward.
Times are medians from triton.testing.do_bench, in milliseconds. --dry runs the newton
section's checks at tiny sizes on the CPU (Triton's interpreter), timing nothing: that
the benchmark runs, on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if "--dry" in sys.argv:  # before triton's import: the interpreter runs the kernels
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton.testing  # noqa: E402

import reclang  # noqa: E402
from reclang.runtime import newton  # noqa: E402
from reclang.runtime.scan import linear_scan as torch_scan  # noqa: E402
from reclang.schedule import NewtonSchedule  # noqa: E402

F = torch.nn.functional
SPECS = Path(__file__).resolve().parent.parent / "specs"
DEV = "cuda"


def ms(fn) -> float:
    """Median milliseconds of fn (triton.testing.do_bench), or the best of two runs
    for a function slower than 50 ms (the loops), which do_bench would run ~10 times."""
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    if time.perf_counter() - start < 0.05:
        return triton.testing.do_bench(fn, warmup=5, rep=50)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def training(fn):
    """fn's forward+backward as a function of no arguments (fn returns a tensor)."""
    return lambda: fn().float().square().mean().backward()


def rel_rms(x, ref) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).square().mean() / ref.square().mean().clamp_min(1e-30)).sqrt().item()


def copy_bandwidth(nbytes: int) -> float:
    """Bytes per second a device-to-device copy moves (read + written)."""
    src = torch.empty(nbytes // 4, device=DEV)
    dst = torch.empty_like(src)
    return 2 * nbytes / (ms(lambda: dst.copy_(src)) * 1e-3)


# ---- scan ---------------------------------------------------------------------------
def loop_scan(a, b, h0):
    h, out = h0, torch.empty_like(b)
    for t in range(b.shape[1]):
        h = torch.addcmul(b[:, t], a[:, t], h)
        out[:, t] = h
    return out


def scan_section(quick):
    B, T, S = (4, 2048, 1024) if quick else (8, 4096, 2048)
    cell = reclang.load(SPECS / "lru.rec")  # complex: the diagonal scan, not a gated one
    kernel = cell._generated("triton", None)[1].linear_scan
    torch.manual_seed(0)
    a = torch.rand(B, T, S, device=DEV).requires_grad_()
    b = torch.randn(B, T, S, device=DEV).requires_grad_()
    h0 = torch.randn(B, S, device=DEV).requires_grad_()
    ref = torch_scan(a.double(), b.double(), h0.double())
    out = kernel(a, b, h0)
    grads = torch.autograd.grad(out.square().sum(), (a, b, h0))
    want = torch.autograd.grad(ref.square().sum(), (a, b, h0))
    print(f"[scan] B={B} T={T} S={S} float32; kernel vs float64 torch scan: "
          f"rel RMS out {rel_rms(out, ref):.1e}, grads "
          + ", ".join(f"{rel_rms(g, w):.1e}" for g, w in zip(grads, want)))
    tensor = a.numel() * a.element_size()
    bw = copy_bandwidth(tensor)
    # forward: read a, b, write h; backward: read a, ∂L/∂h, h, write the gradients of
    # a and b: 3 + 5 tensors at least
    floor = {"fwd": 3 * tensor / bw * 1e3, "fwd+bwd": 8 * tensor / bw * 1e3}
    fns = {"triton": lambda: kernel(a, b, h0), "torch scan": lambda: torch_scan(a, b, h0),
           "torch loop": lambda: loop_scan(a, b, h0)}
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s; floor fwd {floor['fwd']:.3f} ms, "
          f"fwd+bwd {floor['fwd+bwd']:.3f} ms")
    print(f"{'pass':<9}{'impl':<12}{'ms':>9}{'of floor':>10}{'vs triton':>11}")
    dout = torch.randn_like(b)  # the backward from a given gradient: no loss's cost
    for what in ("fwd", "fwd+bwd"):
        times = {}
        for label, fn in fns.items():
            with torch.set_grad_enabled(what != "fwd"):
                times[label] = ms(fn if what == "fwd" else
                                  lambda fn=fn: torch.autograd.grad(fn(), (a, b, h0), dout))
            print(f"{what:<9}{label:<12}{times[label]:>9.3f}"
                  f"{floor[what] / times[label]:>9.0%}{times[label] / times['triton']:>10.1f}x")


# ---- cells --------------------------------------------------------------------------
CELLS = [("min_gru", dict(D=256, N=1024)), ("rg_lru", dict(D=1024)),
         ("mamba_s6", dict(D=256, N=16, R=16)), ("lru", dict(D=256, N=512))]


def plain_scan_module(cell):
    """The cell on the triton backend's diagonal scan of a and b (the scan backend's
    program), where the backend would run its gated scan: None elsewhere."""
    from reclang.codegen.triton import TritonScanProgram
    from reclang.generated import load_source
    from reclang.module import RecModule

    if "gated_scan" not in cell.source("triton"):
        return None
    plan = cell.plan
    source = TritonScanProgram(cell.ir, plan.form_of("diag"), cell.schedule("triton"),
                               plan.summary, "a benchmark's comparison").source()
    return RecModule(cell.ir, "triton", source, load_source(source, f"{cell.name}_plain"))


def cell_section(quick):
    B, T = (4, 1024) if quick else (8, 4096)
    print(f"\n[cells] B={B} T={T} float32; ms, and speed-up over sequential")
    print(f"{'cell':<10}{'pass':<9}{'sequential':>11}{'scan':>9}{'triton':>9}"
          f"{'seq/scan':>10}{'seq/triton':>11}{'plain':>9}{'plain/triton':>13}"
          "   rel err scan/triton")
    for name, hypers in CELLS:
        cell = reclang.load(SPECS / f"{name}.rec", **hypers)
        torch.manual_seed(0)
        mods = {k: cell.module(k).to(DEV) for k in ("sequential", "scan", "triton")}
        plain = plain_scan_module(cell)
        if plain is not None:
            mods["plain"] = plain.to(DEV)
        for m in mods.values():
            m.load_state_dict(mods["sequential"].state_dict())
        x = {d.name: torch.randn(B, T, *d.shape, device=DEV).requires_grad_()
             for d in cell.ir.inputs}
        fns = {k: (lambda m=m: m(**x)[0]) for k, m in mods.items()}
        with torch.no_grad():
            ref = fns["sequential"]()
            errs = "/".join(f"{rel_rms(fns[k](), ref):.0e}" for k in ("scan", "triton"))
            if plain is not None:
                errs += f" (plain {rel_rms(fns['plain'](), ref):.0e})"
        for what in ("fwd", "fwd+bwd"):
            with torch.set_grad_enabled(what != "fwd"):
                t = {k: ms(fn if what == "fwd" else training(fn)) for k, fn in fns.items()}
            fused = f"{t['plain']:>9.2f}{t['plain'] / t['triton']:>12.1f}x" if plain \
                else f"{'-':>9}{'-':>13}"
            print(f"{name:<10}{what:<9}{t['sequential']:>11.2f}{t['scan']:>9.2f}"
                  f"{t['triton']:>9.2f}{t['sequential'] / t['scan']:>9.1f}x"
                  f"{t['sequential'] / t['triton']:>10.1f}x{fused}"
                  f"   {errs if what == 'fwd' else ''}")


# ---- chunk vs fla -------------------------------------------------------------------
def fla_functions():
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.gla import chunk_gla
    except ImportError as e:
        print(f"(flash-linear-attention not importable: {e}; timing reclang alone)")
        return {}
    return {"gla": lambda x: chunk_gla(x["q"], x["k"], x["v"], x["g"])[0],
            "gated_delta_net": lambda x: chunk_gated_delta_rule(
                x["q"], x["k"], x["v"], x["g"], x["beta"])[0]}


def chunk_inputs(name, m, B, T):
    torch.manual_seed(0)
    x = {d.name: torch.randn(B, T, *d.shape, device=DEV) for d in m.ir.inputs}
    if name == "gla":
        x["g"] = F.logsigmoid(x["g"]) / 16
    else:
        x["k"], x["q"] = F.normalize(x["k"], dim=-1), F.normalize(x["q"], dim=-1)
        x["beta"], x["g"] = torch.sigmoid(x["beta"]), F.logsigmoid(x["g"]) / 16
    return {k: v.bfloat16().requires_grad_() for k, v in x.items()}


def chunk_section(quick, cells=("gla", "gated_delta_net")):
    H, K = 16, 128
    lengths = [2048] if quick else [2048, 4096, 8192, 16384]
    fla = fla_functions()
    print(f"\n[chunk] bf16, B·T = 32768 tokens, H={H}, K=V={K}; ms and peak GiB; "
          "ratio = reclang / fla (≤ 1.0 is as fast)")
    print(f"{'cell [backend]':<24}{'T':>6}  {'pass':<9}{'reclang':>9}{'fla':>9}{'ratio':>8}"
          f"{'GiB ours/fla':>14}   rel RMS vs fla")
    for name in cells:
        cell = reclang.load(SPECS / f"{name}.rec", H=H, K=K, V=K)
        for backend in ("chunk", "triton"):
            if cell.supports(backend):
                chunk_rows(f"{name} [{backend}]", cell.module(backend).to(DEV),
                           fla.get(name), lengths)


def chunk_rows(label, m, fla, lengths):
    """The rows of one module: forward and forward+backward at each length."""
    name = m.ir.name
    for T in lengths:
        x = chunk_inputs(name, m, 32768 // T, T)
        fns = {"reclang": lambda x=x: m(**x)[0]}
        if fla is not None:
            fns["fla"] = lambda x=x: fla(x)
        with torch.no_grad():
            err = f"{rel_rms(fns['reclang'](), fns['fla']()):.1e}" if "fla" in fns else ""
        for what in ("fwd", "fwd+bwd"):
            t, peak = {}, {}
            refused = ""
            for k, fn in fns.items():
                with torch.set_grad_enabled(what != "fwd"):
                    run = fn if what == "fwd" else training(fn)
                    try:
                        t[k] = ms(run)
                    except RuntimeError as e:  # fla refuses some Triton versions
                        refused = f"fla refused: {str(e)[:70]}"
                        continue
                    torch.cuda.reset_peak_memory_stats()
                    run()
                    peak[k] = torch.cuda.max_memory_allocated() / 2**30
            ratio = f"{t['reclang'] / t['fla']:>7.2f}x" if "fla" in t else f"{'':>8}"
            fla_t = f"{t['fla']:>9.2f}" if "fla" in t else f"{'':>9}"
            gib = "/".join(f"{peak[k]:.1f}" for k in peak)
            print(f"{label:<24}{T:>6}  {what:<9}{t['reclang']:>9.2f}{fla_t}{ratio}"
                  f"{gib:>14}   {err if what == 'fwd' else refused}")
        del x, fns
        torch.cuda.empty_cache()


# ---- lstm ---------------------------------------------------------------------------
def lstm_section(quick):
    B, T = 32, (256 if quick else 1024)
    print(f"\n[lstm] B={B} T={T} float32, D=N; ms; ratio = triton / cuDNN")
    print(f"{'N':>5}  {'pass':<9}{'sequential':>11}{'triton':>9}{'cuDNN':>9}{'ratio':>8}"
          f"{'seq/triton':>11}   max abs diff triton/seq vs cuDNN")
    for N in (64, 256):
        cell = reclang.load(SPECS / "lstm.rec", D=N, N=N)
        mods = {k: cell.module(k).to(DEV) for k in ("sequential", "triton")}
        mods["triton"].load_state_dict(mods["sequential"].state_dict())
        ref = torch.nn.LSTM(N, N, batch_first=True).to(DEV)
        with torch.no_grad():  # torch's gate order is i, f, g, o; the spec's z[0..3] too
            W, U, b = (getattr(mods["sequential"], p) for p in "WUb")
            ref.weight_ih_l0.copy_(W.reshape(4 * N, N))
            ref.weight_hh_l0.copy_(U.reshape(4 * N, N))
            ref.bias_ih_l0.copy_(b.reshape(-1))
            ref.bias_hh_l0.zero_()
        x = torch.randn(B, T, N, device=DEV, requires_grad=True)
        fns = {k: (lambda m=m: m(x=x)[0]) for k, m in mods.items()}
        fns["cudnn"] = lambda: ref(x)[0]
        with torch.no_grad():
            want = fns["cudnn"]()
            diff = "/".join(f"{(fns[k]() - want).abs().max().item():.1e}"
                            for k in ("triton", "sequential"))
        for what in ("fwd", "fwd+bwd"):
            with torch.set_grad_enabled(what != "fwd"):
                t = {k: ms(fn if what == "fwd" else training(fn)) for k, fn in fns.items()}
            print(f"{N:>5}  {what:<9}{t['sequential']:>11.2f}{t['triton']:>9.2f}"
                  f"{t['cudnn']:>9.2f}{t['triton'] / t['cudnn']:>7.1f}x"
                  f"{t['sequential'] / t['triton']:>10.1f}x   {diff if what == 'fwd' else ''}")


# ---- newton -------------------------------------------------------------------------
NEWTON_IMPLS = {"sequential": ("sequential", None), "loop": ("triton", None),
                "newton torch": ("newton", NewtonSchedule(triton=False)),
                "newton triton": ("newton", NewtonSchedule(triton=True))}


def newton_section(quick, dry=False):
    """ms per implementation, the speed-ups of the Triton newton over the others, the
    iterations it took and its error against the sequential loop (float64 reference)."""
    B, N, lengths = (2, 4, [70]) if dry else (8, 64, [1024] if quick else [1024, 4096, 16384])
    how = "dry run: the CPU's interpreter, no timing" if dry else "ms"
    print(f"\n[newton] B={B} N={N} float32 ({how}); 'loop' is the fused Triton loop; "
          "speed-up = other / newton triton")
    if not dry:
        print(f"{'cell':<10}{'T':>6}  {'pass':<9}" + "".join(f"{k:>15}" for k in NEWTON_IMPLS)
              + f"{'vs seq':>8}{'vs loop':>8}{'vs torch':>9}{'iters':>6}   rel RMS vs seq "
              "(triton/torch), grad triton vs torch")
    for name in ("para_gru", "indrnn"):
        cell = reclang.load(SPECS / f"{name}.rec", D=N, N=N)
        mods = {k: cell.module(b, schedule=s).to(DEV) for k, (b, s) in NEWTON_IMPLS.items()}
        for m in mods.values():
            m.load_state_dict(mods["sequential"].state_dict())
        for T in lengths:
            newton_rows(name, mods, B, T, dry)


def newton_rows(name, mods, B, T, dry):
    torch.manual_seed(0)
    x = torch.randn(B, T, mods["sequential"].ir.inputs[0].shape[0], device=DEV,
                    requires_grad=True)
    fns = {k: (lambda m=m: m(x=x)[0]) for k, m in mods.items()}
    with torch.no_grad():
        ref = mods["sequential"].double()(x=x.double())[0]
        mods["sequential"].float()
        fns["newton triton"]()
        report = newton.last_report
        err = "/".join(f"{rel_rms(fns[k](), ref):.0e}" for k in ("newton triton", "newton torch"))
    grads = [torch.autograd.grad(fns[k]().square().mean(), x)[0]
             for k in ("newton triton", "newton torch")]  # the adjoints, against each other
    err += f", grad {rel_rms(*grads):.0e}"
    if dry:
        print(f"{name:<10}{T:>6}  checked: {report.iterations} iterations, rel RMS vs seq "
              f"(triton/torch) {err}")
        return
    for what in ("fwd", "fwd+bwd"):
        with torch.set_grad_enabled(what != "fwd"):
            t = {k: ms(fn if what == "fwd" else training(fn)) for k, fn in fns.items()}
        ours = t["newton triton"]
        print(f"{name:<10}{T:>6}  {what:<9}" + "".join(f"{v:>15.2f}" for v in t.values())
              + f"{t['sequential'] / ours:>7.1f}x{t['loop'] / ours:>7.1f}x"
              f"{t['newton torch'] / ours:>8.1f}x{report.iterations:>6}   "
              + (err if what == "fwd" else ""))


SECTIONS = {"scan": scan_section, "cells": cell_section, "chunk": chunk_section,
            "lstm": lstm_section, "newton": newton_section}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    parser.add_argument("--chunk-cells", nargs="+", default=["gla", "gated_delta_net"])
    parser.add_argument("--dry", action="store_true",
                        help="the newton section's checks on the CPU, tiny, no timing")
    args = parser.parse_args()
    if args.dry:
        global DEV
        DEV = "cpu"
        newton_section(True, dry=True)
        return
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {triton.__version__}")
    for name in args.only:
        if name == "chunk":
            chunk_section(args.quick, args.chunk_cells)
        else:
            SECTIONS[name](args.quick)


if __name__ == "__main__":
    main()
