"""The `reclang` command: check, inspect, graph and run a spec."""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__, load
from .analysis.forms import describe
from .cost.auto import explain
from .errors import RecError, Source
from .generated import with_origins
from .timing import best_of


def _hypers(args) -> dict:
    result = {}
    for pair in args.set or []:
        name, _, value = pair.partition("=")
        if not _:
            raise RecError(f"--set: hyperparameters are given as NAME=VALUE, got {pair!r}",
                           Source("", args.spec))
        try:
            result[name] = int(value)
        except ValueError:
            try:
                result[name] = float(value)
            except ValueError:
                raise RecError(f"--set: {name} must be a number, got {value!r}",
                               Source("", args.spec)) from None
    return result


def cmd_check(args) -> int:
    cell = load(args.spec, **_hypers(args))
    ir = cell.ir
    print(f"{args.spec}: ok: cell {cell.name} with {len(ir.inputs)} inputs, "
          f"{len(ir.params)} params, {len(ir.states)} states, {len(ir.outputs)} outputs")
    return 0


def cmd_inspect(args) -> int:
    cell = load(args.spec, **_hypers(args))
    if args.json:
        print(cell.to_json())
        return 0
    ir = cell.ir
    print(f"cell {cell.name}(" + ", ".join(f"{k}={v!r}" for k, v in ir.hypers.items()) + ")")
    for kind in ("input", "param", "state"):
        for d in ir.of_kind(kind):
            dtype = ": complex" if d.dtype == "complex" else ""
            print(f"  {kind:<6} {d.name}{list(d.shape)}{dtype}")
    print("\n" + cell.describe())
    print(f"  auto: {cell.auto_summary()}")
    print("  auto on CPU tensors: " + "\n    ".join(explain(cell)))
    print("\nIR\n" + ir.summary())
    form = cell.form(args.backend)
    print(f"\nform ({args.backend})\n" + ("\n".join(describe(form)) if form is not None else
                                          "the IR itself: the statements, one step at a time"))
    print(f"\nschedule ({args.backend})\n{cell.schedule(args.backend).describe()}")
    source = cell.source(args.backend)
    if args.origins:
        source = with_origins(source, ir.source)
    print(f"\ngenerated source ({args.backend})\n" + source)
    return 0


def cmd_graph(args) -> int:
    from .drawing import render, to_dot

    dot = render(to_dot(load(args.spec, **_hypers(args))), args.output, args.spec)
    if args.output:
        print(f"wrote {args.output}")
    else:
        print(dot)
    return 0


def cmd_run(args) -> int:
    import torch

    cell = load(args.spec, **_hypers(args))
    torch.manual_seed(args.seed)
    m = cell.module(args.backend)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    m = m.to(dtype)
    from .samples import random_inputs

    inputs = random_inputs(cell, args.batch, args.T, args.scale, dtype=dtype)
    with torch.no_grad():
        m(**{k: v[:, :1] for k, v in inputs.items()})  # warm-up
        start = time.perf_counter()
        y, state = m(**inputs)
        elapsed = time.perf_counter() - start
        outs = y if isinstance(y, dict) else {cell.ir.outputs[0].arg: y}
        steps, s = {k: [] for k in outs}, None
        for t in range(args.T):
            y_t, s = m.step(state=s, **{k: v[:, t] for k, v in inputs.items()})
            for k, v in (y_t if isinstance(y_t, dict) else {next(iter(outs)): y_t}).items():
                steps[k].append(v)
    print(f"cell {cell.name}, backend {m.backend}, B={args.batch}, T={args.T}, {args.dtype}")
    for k, v in outs.items():
        print(f"  out   {k}: {list(v.shape)}  {_difference(torch.stack(steps[k], 1), v)}")
    for k, v in state.items():
        print(f"  state {k}: {list(v.shape)}  {_difference(s[k], v)}")
    tokens = args.batch * args.T
    print(f"  forward: {elapsed * 1e3:.2f} ms ({tokens / elapsed:,.0f} tokens/s)")
    _warn_if_not_finite(list(outs.values()), args.scale)
    return 0


def _relative(a, b) -> float:
    """max |a - b| / max |b|: an absolute difference of 1.6e+07 between values of 1e+13
    is float32 rounding, not a failure."""
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


def _difference(a, b) -> str:
    diff = (a - b).abs().max().item()
    return (f"max |full - step| = {diff:.3g} (relative {_relative(a, b):.2g}, "
            f"max |full| = {b.abs().max().item():.3g})")


def _warn_if_not_finite(outputs, scale: float):
    """Random inputs know nothing of a cell's ranges (a log gate above 0, keys of norm
    above 1): say so when the cell diverged on them, rather than leave a bare nan."""
    import torch

    if all(torch.isfinite(y).all() for y in outputs):
        return
    print(f"note: some outputs are not finite: the inputs are normal samples of scale "
          f"{scale:g}, which this cell does not expect everywhere (e.g. a log decay "
          f"above 0 grows the state at every step); try a smaller --scale or -T",
          file=sys.stderr)


def cmd_bench(args) -> int:
    """Every backend that can run the cell, side by side on the same inputs and params:
    forward and forward+backward times (best of --repeat) and the largest difference
    from the sequential backend."""
    import torch

    cell = load(args.spec, **_hypers(args))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RecError(f"--device cuda: CUDA is not available to this torch "
                       f"({torch.__version__})", Source("", args.spec))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backends = [v.backend for v in cell.verdicts
                if v.supported]
    if device == "cpu" and "triton" in backends:  # its kernels run on CUDA tensors
        backends.remove("triton")
        print("(triton skipped: its kernels run on CUDA tensors)")
    plt = _pyplot(args.spec) if args.plot else None  # before the timings: fail early
    torch.manual_seed(args.seed)
    modules = {b: cell.module(b).to(device) for b in backends}
    for m in modules.values():
        m.load_state_dict(modules["sequential"].state_dict())
    times = {T: _bench_at(cell, modules, args, T, device) for T in args.T}
    if args.plot:
        _plot(plt, cell, times, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _bench_at(cell, modules: dict, args, T: int, device: str) -> dict:
    """One table: every backend at length T; returns backend -> (forward, fwd+bwd) s."""
    import torch

    from .samples import random_inputs

    inputs = random_inputs(cell, args.batch, T, args.scale, device=device)
    print(f"cell {cell.name} ({cell.plan.form}), B={args.batch}, T={T}, float32, "
          f"{device}")
    print(f"  {'backend':<11}{'forward':>10}{'fwd+bwd':>10}{'max |y - sequential|':>22}"
          f"{'relative':>10}")
    reference, times = None, {}
    for name, m in modules.items():
        with torch.no_grad():
            y = _outputs(m(**inputs)[0])
            forward = best_of(lambda m=m: m(**inputs), args.repeat)
        reference = reference if reference is not None else y
        xs = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        both = best_of(lambda m=m, xs=xs: _loss(m(**xs)[0]).backward(), args.repeat)
        diff = (y - reference).abs().max().item()
        print(f"  {name:<11}{forward * 1e3:>8.2f}ms{both * 1e3:>8.2f}ms{diff:>22.3g}"
              f"{_relative(y, reference):>10.2g}")
        times[name] = (forward, both)
    print(f"  (relative: max |y - sequential| / max |sequential|, where max |sequential| = "
          f"{reference.abs().max().item():.3g})")
    _warn_if_not_finite([reference], args.scale)
    return times


def _pyplot(spec: str):
    try:
        import matplotlib
    except ImportError:
        raise RecError("--plot needs matplotlib (pip install matplotlib)",
                       Source("", spec)) from None
    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot
    return pyplot


def _plot(plt, cell, times: dict, path: str) -> None:
    """Time against T per backend, log-log: forward, and forward + backward."""
    Ts = sorted(times)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, index, title in zip(axes, (0, 1), ("forward", "forward + backward")):
        for backend in times[Ts[0]]:
            ax.loglog(Ts, [times[T][backend][index] * 1e3 for T in Ts], "o-", label=backend)
        ax.set(title=title, xlabel="T (steps)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time (ms, best of the repeats)")
    axes[0].legend()
    fig.suptitle(f"{cell.name} ({cell.plan.form})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _outputs(y):
    import torch

    return y if torch.is_tensor(y) else torch.cat([v.reshape(-1) for v in y.values()])


def _loss(y):
    """A real scalar of the outputs, complex ones included (|y|², not y²)."""
    import torch

    y = _outputs(y)
    return (torch.view_as_real(y) if y.is_complex() else y).square().mean()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reclang", description="Compile recurrent cells "
                                "written in the reclang language.")
    p.add_argument("--version", action="version", version=f"reclang {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, fn, help):
        c = sub.add_parser(name, help=help)
        c.add_argument("spec", help="a .rec file")
        c.add_argument("--set", action="append", metavar="NAME=VALUE",
                       help="override a hyperparameter (repeatable)")
        c.set_defaults(fn=fn)
        return c

    command("check", cmd_check, "parse and check a spec")
    c = command("inspect", cmd_inspect, "show the plan (partition, structure, form, backends), "
                "the IR, and for --backend its form, its schedule and the generated source")
    c.add_argument("--backend", default="sequential")
    c.add_argument("--json", action="store_true", help="print only the plan, as JSON")
    c.add_argument("--origins", action="store_true",
                   help="show the spec line each generated line comes from")
    c = command("graph", cmd_graph, "draw the IR: Graphviz dot, or a picture through `dot`")
    c.add_argument("-o", "--output", help="file to write: .svg, .png or .pdf (rendered by "
                   "Graphviz's dot), .dot or .gv (dot text; default: standard output)")
    c = command("run", cmd_run, "run on random inputs; compare full-sequence and step forms")
    c.add_argument("--backend", default="sequential")
    c.add_argument("-B", "--batch", type=int, default=2)
    c.add_argument("-T", type=int, default=64)
    c.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--scale", type=float, default=1.0,
                   help="standard deviation of the random inputs (default 1)")
    c = command("bench", cmd_bench, "time every backend that can run the cell, side by side")
    c.add_argument("-B", "--batch", type=int, default=4)
    c.add_argument("-T", type=int, nargs="+", default=[1024],
                   help="sequence lengths, one table each (default 1024)")
    c.add_argument("--repeat", type=int, default=3)
    c.add_argument("--plot", metavar="FILE.png",
                   help="draw time against T per backend, log-log (matplotlib)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--scale", type=float, default=1.0,
                   help="standard deviation of the random inputs (default 1)")
    c.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where to run (default: cuda when available)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except RecError as err:
        if err.source is None:  # an error about the spec as a whole: name its file
            err = RecError(err.diagnostics, Source("", args.spec))
        print(err, file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader stopped early (`reclang inspect ... | head`)
        # point stdout at /dev/null so that Python's own flush at exit stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
