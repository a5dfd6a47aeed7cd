"""A fuzzer for specs: mutations of every catalogue spec, checked in a worker process
with a time limit per case.

Every case must either load, plan, compile and run, or raise a RecError that names
the file, a line and a column, and whose quoted line is the spec's own line. Anything
else (another exception, a wrong quoted line, a case over its time limit) is a failure,
classified by exception type and the innermost reclang frame.

    python tests/fuzzing.py --examples 3000 --seed 1 --timeout 10   # a campaign

tests/test_fuzz_errors.py runs a bounded, seeded campaign of the same cases.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import random
import re
import resource
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.rec"))
# the constructs the catalogue uses little: complex states, where, max, clamp, A[i: N]
EXTRA = """cell mix(D = 4, N = 3, scale = 0.5):
    input x[D], g[N]
    param W[N, D] ~ normal(0, 0.1)
    param A[i: N, j: N] = where(i < j, 1.0, 0.0)
    state h[N] = 0, z[N]: complex = 0
    u[n] = sum(d: W[n, d] * x[d]) + max(m: A[n, m] * h[m])
    h[n] <- exp(g[n]) * h[n] + tanh(u[n]) * scale
    z[n] <- exp(1j * g[n]) * z[n] + complex(h[n], 0)
    out y[n] = real(z[n]) + clamp(h[n], -1, 1)
"""
# issue 18's constructs: for blocks (nested, a state updated per iteration), // and %,
# floor, inf and pi, softmax over an index
EXTRA_18 = """cell sub_steps(D = 4, N = 3, R = 2):
    input x[D], g[N], k[R, N]
    param W[N, D] ~ normal(0, 0.1)
    state h[N] = 0, m[N] = -inf
    for r in R:
        a[n] = softmax(n: k[r, n] * g[n]) + (g[n] % 1.5) * 0.1 + r
        for q in 2:
            h[n] <- 0.5 * h[n] + tanh(a[n] + sum(d: W[n, d] * x[d])) * 0.5 ** q
    m[n] <- max(m[n], floor(g[n] * 4) / 4 + (g[n] // 2))
    out y[n] = h[n] + sin(pi * a[n]) + exp(g[n] - m[n])
"""
FILENAME = "fuzz.rec"
RUN_ELEMENTS = 10 ** 6  # larger cells are checked and generated, not run: size is no bug

# Tokens of the language plus ones that probe limits and odd characters.
TOKEN = re.compile(r"[ \t]+|\n|#[^\n]*|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?j?|[A-Za-z_]\w*|<-|\*\*|//|"
                   r"<=|>=|==|!=|.", re.DOTALL)
POOL = ["[", "]", "(", ")", ",", ":", "=", "<-", "~", "sum(i: ", "sum(", "max(j: ", "i", "j",
        "x", "1j", "**", "*", "/", "-", "+", "<", "==", "\n", "    ", "\t", "out ", "state ",
        "param ", "input ", "cell ", "#", "0", "1", "-1", "0.0", "2.5", "1e30", "-1e30",
        "1e400", "1e-400", "2 ** 20000", "9 ** 9 ** 9", "2 ** 2 ** 40", "1" * 5000, "log(0)",
        "exp(1000)", "1 / 0", "0 ** -1", "sqrt(-1)", "exp", "log", "tanh", "where(",
        "complex(", "real", "normal(0, 1)", "uniform(0, 1)", "arange(", ": complex",
        "\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\ufeff", "\r", "\\\n", "é", "\x00",
        "a" * 300, "(" * 60, "-" * 60, "for r in 2:\n", "for ", " in ", "        ", "//", "%",
        "floor(", "softmax(n: ", "pi", "-inf", "r"]


NUMBERS = ["0", "1", "2", "0.5", "1e-30", "1e30", "1e308", "3", "4300", "65536", "2 ** 31",
           "1j", "(0 - 1)", "nan", "inf"]
OPERATORS = ["+", "-", "*", "/", "**", "<", "==", ">=", "//", "%"]
FUNCTIONS = ["exp", "log", "tanh", "sigmoid", "sqrt", "abs", "softplus", "real", "conj",
             "max", "sum", "logsumexp", "where", "clamp", "complex", "normal", "arange",
             "floor", "softmax", "pi", "inf"]


def mutate(text: str, rng: random.Random) -> str:
    """One to four token-, line- or character-level edits; the edits of one kind of
    token into another of its kind keep the syntax, to reach the checks, the analysis
    and the generators."""
    for _ in range(rng.randint(1, 4)):
        edit = rng.choice([_token_edit, _line_edit, _char_edit, _same_kind, _same_kind])
        text = edit(text, rng)
    return text


def _same_kind(text, rng):
    tokens = TOKEN.findall(text)
    names = sorted({t for t in tokens if re.fullmatch(r"[A-Za-z]\w*", t)})
    k = rng.randrange(len(tokens))
    token = tokens[k]
    if re.fullmatch(r"\d[\d.eE+-]*j?", token):
        tokens[k] = rng.choice(NUMBERS)
    elif token in OPERATORS:
        tokens[k] = rng.choice(OPERATORS)
    elif re.fullmatch(r"[A-Za-z]\w*", token):
        tokens[k] = rng.choice(names + FUNCTIONS)
    return "".join(tokens)


def _token_edit(text, rng):
    tokens = TOKEN.findall(text) or [""]
    k = rng.randrange(len(tokens))
    choice = rng.randrange(5)
    if choice == 0:
        del tokens[k]
    elif choice == 1:
        tokens.insert(k, tokens[k])
    elif choice == 2:
        j = rng.randrange(len(tokens))
        tokens[k], tokens[j] = tokens[j], tokens[k]
    elif choice == 3:
        tokens[k] = rng.choice(tokens)
    else:
        tokens[k] = rng.choice(POOL)
    return "".join(tokens)


def _line_edit(text, rng):
    lines = text.split("\n")
    k, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    choice = rng.randrange(4)
    if choice == 0:
        del lines[k]
    elif choice == 1:
        lines.insert(j, lines[k])
    elif choice == 2:
        lines[k], lines[j] = lines[j], lines[k]
    else:
        lines[k] = " " * rng.choice([0, 2, 4, 8]) + lines[k].lstrip()
    return "\n".join(lines)


def _char_edit(text, rng):
    p = rng.randrange(len(text) + 1)
    return text[:p] + rng.choice(POOL + [""]) + text[p + rng.randrange(4):]


def cases(n: int, seed: int):
    """`n` mutated specs (str), with a few undecodable files (bytes) among them."""
    rng = random.Random(seed)
    bases = [p.read_text() for p in SPECS] + [EXTRA, EXTRA_18]
    for k in range(n):
        text = mutate(rng.choice(bases), rng)
        if k % 50 == 49:  # not UTF-8 (Latin-1 bytes), or a BOM
            yield rng.choice([text.encode("latin-1", "replace") + b"\xe9\xff",
                              b"\xef\xbb\xbf" + text.encode()])
        else:
            yield text


# ---- checking one case ---------------------------------------------------------------
def check(case: str | bytes, workdir: Path) -> str | None:
    """None when the case loads and runs or fails with a proper RecError, else the class
    of its failure."""
    import reclang

    text, filename = case, FILENAME
    if isinstance(case, bytes):
        path = workdir / FILENAME
        path.write_bytes(case)
        text, filename = case.decode("utf-8-sig", "replace"), str(path)
    try:
        cell = reclang.load(path) if isinstance(case, bytes) else reclang.loads(case, filename)
        _run(cell)
    except reclang.RecError as err:
        return _check_rec_error(err, text, filename)
    except Exception as err:  # noqa: BLE001 - the failures this fuzzer looks for
        return _classify(err)
    return None


def _run(cell):
    import torch

    assert cell.verdicts  # the analysis runs
    if sum(math.prod(d.shape) for d in cell.ir.decls.values()) > RUN_ELEMENTS:
        cell.source("sequential")
        return
    m = cell.module()
    xs = {d.name: torch.randn(1, 3, *d.shape) for d in cell.ir.inputs}
    _, state = m(**xs)
    m.step(state=state, **{k: v[:, 0] for k, v in xs.items()})


def _check_rec_error(err, text: str, filename: str) -> str | None:
    rendered = str(err)
    if not re.match(rf"{re.escape(filename)}:\d+:\d+: error: ", rendered):
        return f"RecError without file:line:col: {rendered.splitlines()[0][:80]}"
    lines = text.split("\n")
    for d in err.diagnostics:
        want = lines[d.loc.line - 1].rstrip("\r") if 1 <= d.loc.line <= len(lines) else None
        if want is None or err.source.line(d.loc.line) != want:
            return "RecError quoting another line than the one it counts"
    return None


def _classify(err: Exception) -> str:
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "/reclang/" in f.filename or "/backends/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "?"
    return f"{type(err).__name__} in {where}"


# ---- the worker ----------------------------------------------------------------------
def _worker(conn, workdir, memory):
    import torch

    import reclang  # noqa: F401 - imported once, before the cases

    torch.set_num_threads(1)  # the cases are tiny; threads only contend with the parent

    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    used = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + memory, hard))
    while True:
        case = conn.recv()
        conn.send(check(case, Path(workdir)))


class Runner:
    """Runs cases in a worker process, restarted after a case over its time limit."""

    def __init__(self, workdir: Path, timeout: float, memory: int = 4 << 30):
        self.workdir, self.timeout, self.memory = workdir, timeout, memory
        self.process = None

    def _start(self):
        # spawn, not fork: a child forked after torch started its thread pool can hang in
        # its first parallel op (an einsum, here), when earlier tests in the process ran one
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, daemon=True,
                                       args=(child, str(self.workdir), self.memory))
        self.process.start()

    def run(self, case) -> tuple[str | None, float]:
        if self.process is None or not self.process.is_alive():
            self._start()
        start = time.perf_counter()
        self.conn.send(case)
        if self.conn.poll(self.timeout):
            try:
                return self.conn.recv(), time.perf_counter() - start
            except EOFError:
                self.close()
                return "worker died", time.perf_counter() - start
        self.close()
        return f"over the time limit of {self.timeout:g} s", time.perf_counter() - start

    def close(self):
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.process = None


def campaign(n: int, seed: int, timeout: float, workdir: Path) -> dict[str, list]:
    """The failures of `n` cases, by class: each with its cases."""
    failures: dict[str, list] = {}
    runner = Runner(workdir, timeout)
    try:
        for case in cases(n, seed):
            failure, _ = runner.run(case)
            if failure is not None:
                failures.setdefault(failure, []).append(case)
    finally:
        runner.close()
    return failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    p.add_argument("--save", help="a file to write one example per failure class to")
    args = p.parse_args(argv)
    import tempfile

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        failures = campaign(args.examples, args.seed, args.timeout, Path(workdir))
    total = sum(len(v) for v in failures.values())
    print(f"{args.examples} cases in {time.perf_counter() - start:.0f} s: {total} failures "
          f"in {len(failures)} classes")
    for failure, examples in Counter({k: len(v) for k, v in failures.items()}).most_common():
        print(f"  {examples:5d}  {failure}")
    if args.save:
        with open(args.save, "w") as f:
            for failure, examples in failures.items():
                f.write(f"=== {failure}\n{examples[0]!r}\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
