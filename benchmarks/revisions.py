"""Two revisions of reclang timed side by side in one run, on the CPU: did a change
make the generated code slower?

    python benchmarks/revisions.py BEFORE [AFTER] [--T 1024] [--rounds 3]

Each revision (a git revision; AFTER defaults to the working tree) is unpacked into a
temporary folder and imported from there by a worker process of its own. The workers
take turns on the same cells, backends and inputs (seeded), round after round, so
that both see the same load on the machine; each row prints the best time of each
revision in milliseconds and the ratio after / before (≤ 1.0: no slower). The cells:
the catalogue's diagonal cells on sequential and scan, its matrix cells on sequential
and chunk, and the LSTM on sequential; float32, forward and forward+backward.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CASES = [  # (spec, hyperparameters, batch, backends)
    ("min_gru", dict(D=64, N=128), 8, ("sequential", "scan")),
    ("hgrn", dict(D=256), 8, ("sequential", "scan")),
    ("mamba_s6", dict(D=64, N=16, R=4), 4, ("sequential", "scan")),
    ("lru", dict(D=64, N=128), 8, ("sequential", "scan")),
    ("gla", dict(H=4, K=64, V=64), 2, ("sequential", "chunk")),
    ("delta_net", dict(H=4, K=64, V=64), 2, ("sequential", "chunk")),
    ("lstm", dict(N=64), 4, ("sequential",)),
]

# What a worker runs: reads one JSON request per line, answers one JSON line each.
WORKER = r'''
import json, sys, torch
import reclang
from reclang.timing import best_of
torch.set_num_threads(int(sys.argv[1]))
modules = {}
for line in sys.stdin:
    spec, hypers, batch, T, backend, repeat = json.loads(line)
    key = (spec, json.dumps(hypers), backend)
    if key not in modules:
        cell = reclang.load(spec, **hypers)
        torch.manual_seed(0)
        modules[key] = cell.module(backend)
    m = modules[key]
    gen = torch.Generator().manual_seed(1)
    x = {d.name: torch.randn(batch, T, *d.shape, generator=gen).requires_grad_()
         for d in m.ir.inputs}
    if "g" in x:
        x["g"] = torch.nn.functional.logsigmoid(x["g"].detach()).requires_grad_()
    def loss():
        y, _ = m(**x)
        ys = y.values() if isinstance(y, dict) else [y]
        return sum(v.square().mean() for v in ys)
    with torch.no_grad():
        fwd = best_of(loss, repeat)
    both = best_of(lambda: loss().backward(), repeat)
    print(json.dumps([fwd * 1e3, both * 1e3]), flush=True)
'''


def unpack(revision: str | None, into: Path) -> Path:
    """The source tree of a revision (None: the working tree), laid out as installed:
    the top-level backends/ as reclang/backends."""
    tree = into / (revision or "working-tree").replace("/", "_")
    if revision is None:
        shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__"))
    else:
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    shutil.move(str(tree / "backends"), str(tree / "reclang" / "backends"))
    return tree


def worker(tree: Path, threads: int) -> subprocess.Popen:
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin",
           "RECLANG_CACHE": str(tree / ".cache")}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(threads)], cwd=tree, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ask(proc: subprocess.Popen, request: list) -> list[float]:
    proc.stdin.write(json.dumps(request) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("before")
    args.add_argument("after", nargs="?")
    args.add_argument("--T", type=int, default=1024)
    args.add_argument("--rounds", type=int, default=3)
    args.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = args.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"torch {torch.__version__}; T={args.T}, float32, best of {args.rounds} rounds "
          f"(ms); before = {args.before}, after = {args.after or 'working tree'}")
    print(f"{'cell':<11}{'backend':<12}{'pass':<9}{'before':>9}{'after':>9}{'after/before':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        procs = [worker(unpack(rev, Path(tmp)), args.threads) for rev in (args.before, args.after)]
        for spec, hypers, batch, backends in CASES:
            for backend in backends:
                request = [f"specs/{spec}.rec", hypers, batch, args.T, backend, 1]
                best = [[float("inf")] * 2 for _ in procs]
                for _ in range(args.rounds):  # turns: both revisions see the same load
                    for p, b in zip(procs, best):
                        b[:] = map(min, b, ask(p, request))
                for k, name in enumerate(("fwd", "fwd+bwd")):
                    before, after = best[0][k], best[1][k]
                    print(f"{spec:<11}{backend:<12}{name:<9}{before:9.2f}{after:9.2f}"
                          f"{after / before:14.2f}", flush=True)
        for p in procs:
            p.stdin.close()
            p.wait()


if __name__ == "__main__":
    main()
