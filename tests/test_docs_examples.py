"""The documentation runs: every example in docs/language.md and docs/module.md is
checked against the implementation, and the example scripts run.

Conventions in the docs (plain Markdown fences; the word after ``` is the kind):
    ```rec                a complete cell: it loads, builds a module and runs
    ```rec-error          a cell that must fail with a RecError (loading it or building
                          its module); a plain ``` block right after it is the exact
                          message, for a spec loaded as `c.rec`
    ```rec file=NAME.rec  (module.md) a spec the python and console examples read
    ```python             (module.md) run in order, in one namespace, in a folder that
                          holds the `file=` specs
    ```console            (module.md) `$ reclang ...` lines and their exact output;
                          timings are masked
"""

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reclang
from reclang import cli

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def fences(doc: str) -> list[tuple[str, str, str]]:
    """(info string, body, the body of a plain ``` fence right after it, or '')."""
    text = (ROOT / "docs" / doc).read_text()
    found = [(m.group(1).strip(), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
    result = []
    for k, (info, body, _, end) in enumerate(found):
        after = ""
        if k + 1 < len(found) and found[k + 1][0] == "" and \
                text[end:found[k + 1][2]].strip() == "":
            after = found[k + 1][1]
        result.append((info, body, after))
    return result


def _file(info: str) -> str | None:
    """NAME.rec from an info string `rec file=NAME.rec`."""
    words = info.split()
    return words[1].removeprefix("file=") if len(words) > 1 and \
        words[1].startswith("file=") else None


def _id(code: str) -> str:
    header = next(line for line in code.splitlines() if line.startswith("cell "))
    return header.split("(")[0].removeprefix("cell ")


LANGUAGE = fences("language.md")
MODULE = fences("module.md")
NN = fences("nn.md")
CELLS = [body for info, body, _ in LANGUAGE + MODULE if info.split()[:1] == ["rec"]]
ERRORS = [(body, after, _file(info) or "c.rec") for info, body, after in LANGUAGE + MODULE
          if info.split()[:1] == ["rec-error"]]


def test_the_docs_have_examples():
    assert len(CELLS) >= 12 and len(ERRORS) >= 6


@pytest.mark.parametrize("code", CELLS, ids=[_id(c) for c in CELLS])
def test_rec_blocks_load_and_run(code):
    torch.manual_seed(0)
    m = reclang.loads(code, "c.rec").module()
    inputs = {d.name: torch.randn(2, 3, *d.shape) for d in m.ir.inputs}
    y, state = m(**inputs)
    for v in (y.values() if isinstance(y, dict) else [y]):
        assert v.shape[:2] == (2, 3) and torch.isfinite(v).all()
    for d in m.ir.states:
        assert state[d.name].shape == (2, *d.shape)


def _error_id(expected: str, name: str) -> str:
    return expected.partition("error: ")[2].split("\n")[0][:48] or name


@pytest.mark.parametrize("code, expected, name", ERRORS,
                         ids=[_error_id(e, n) for _, e, n in ERRORS])
def test_rec_error_blocks_fail_with_the_message_shown(code, expected, name):
    with pytest.raises(reclang.RecError) as info:
        reclang.loads(code, name).module()
    if expected:
        assert str(info.value) == expected.rstrip("\n")


def _mask_timings(text: str) -> str:
    """Hides what differs from run to run: timings, and rounding differences."""
    text = re.sub(r"\d[\d.]* ?ms\b", "<time>", text)
    text = re.sub(r"\([\d,]+ tokens/s\)", "(<rate>)", text)
    return re.sub(r"(max \|full - step\| = )\S+ \(relative [^,]+", r"\1<diff>", text)


def test_module_md_runs(tmp_path, monkeypatch):
    """The python blocks of module.md run in order, and each console block prints
    what the page says it prints."""
    for info, body, _ in MODULE:
        if _file(info):
            (tmp_path / _file(info)).write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECLANG_CACHE", str(tmp_path / "cache"))
    namespace = {"__name__": "module_md"}
    consoles = 0
    for info, body, _ in MODULE:
        if info == "python":
            torch.manual_seed(0)
            exec(compile(body, "module.md", "exec"), namespace)  # noqa: S102
        elif info == "console":
            consoles += 1
            for command, expected in _commands(body):
                assert _mask_timings(_run_cli(command)) == _mask_timings(expected), command
    assert consoles >= 1


def test_nn_md_runs(tmp_path, monkeypatch):
    """The python blocks of nn.md run in order (in a folder where specs/ is the
    catalogue); its console block, which draws an SVG, where Graphviz's dot exists."""
    (tmp_path / "specs").symlink_to(ROOT / "specs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECLANG_CACHE", str(tmp_path / "cache"))
    namespace = {"__name__": "nn_md"}
    blocks = [info for info, _, _ in NN]
    assert blocks.count("python") >= 5 and blocks.count("console") == 1
    for info, body, _ in NN:
        if info == "python":
            torch.manual_seed(0)
            exec(compile(body, "nn.md", "exec"), namespace)  # noqa: S102
        elif info == "console" and shutil.which("dot"):
            for command, expected in _commands(body):
                assert _run_cli(command) == expected, command
            assert (tmp_path / "mamba_s6.svg").read_text().rstrip().endswith("</svg>")


def _commands(block: str):
    """($ line, the output lines under it) for each command of a console block."""
    chunks = re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]
    for chunk in chunks:
        command, _, output = chunk.partition("\n")
        yield command, output


def _run_cli(command: str) -> str:
    argv = shlex.split(command)
    assert argv[0] == "reclang", command
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv[1:])
        except SystemExit as exit:  # argparse
            code = exit.code
    text = out.getvalue() + err.getvalue()
    return text + (f"[exit status {code}]\n" if code else "")


@pytest.mark.parametrize("script, args", [("quickstart.py", []),
                                          ("train_cell.py", ["--steps", "20"]),
                                          ("newton_training.py", ["--steps", "3", "--T", "64"])])
def test_examples_run(script, args, tmp_path):
    env = dict(os.environ, RECLANG_CACHE=str(tmp_path))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                            capture_output=True, text=True, timeout=300, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    if script == "train_cell.py":
        assert "baseline, chance" in result.stdout and "held-out" in result.stdout
    if script == "newton_training.py":  # it asserts that the two loss curves agree
        assert "largest relative difference between the two loss curves" in result.stdout


def test_delta_net_parity_example_shows_what_negative_eigenvalues_buy(tmp_path):
    """β ∈ [0, 2] learns running parity (and generalizes to 4x longer sequences);
    β ∈ [0, 1] stays near chance. Seeded, so the run is reproducible."""
    png = tmp_path / "parity.png"
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "delta_net_parity.py"),
                             "--png", str(png)], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr
    accuracy = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"β ∈ \[0, (\d)\]: final loss [\d.]+, held-out accuracy on T=64 ([\d.]+)%",
        result.stdout)}
    assert accuracy["2"] > 95 and accuracy["1"] < 70, result.stdout
    assert png.exists() and png.stat().st_size > 1000
