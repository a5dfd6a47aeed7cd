"""The reclang command line."""

import re
from pathlib import Path

from reclang.cli import main

GLA = str(Path(__file__).resolve().parent.parent / "specs" / "gla.rec")


def test_check(capsys):
    assert main(["check", GLA]) == 0
    assert "ok: cell gla with 4 inputs, 0 params, 1 states, 1 outputs" in capsys.readouterr().out


def test_check_reports_errors_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.rec"
    bad.write_text("cell b(D = 2):\n    input x[D]\n    out y[d] = xx[d]\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}:3:16: error: unknown name 'xx'") and "Traceback" not in err


def test_inspect_shows_phases_ir_and_source(capsys):
    assert main(["inspect", GLA, "--set", "K=4"]) == 0
    out = capsys.readouterr().out
    assert "cell gla(H=4, K=4" in out
    assert "cell gla: mat-decay (S: key-wise decay along i)" in out
    assert re.search(r"core\s+S'", out) and re.search(r"epilogue\s+o", out)
    assert "S' = diag(exp(g[h, i])) S + (k[h, i])(v[h, j])ᵀ" in out
    assert "def forward(" in out and "def step(" in out and "UPDATE" in out


def test_inspect_json(capsys):
    import json

    assert main(["inspect", GLA, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["form"] == "mat-decay" and plan["states"][0]["transition"]["kind"] == "diagonal"


def test_graph_writes_dot(tmp_path, capsys):
    target = tmp_path / "g.dot"
    assert main(["graph", GLA, "-o", str(target)]) == 0
    assert target.read_text().startswith('digraph "gla"')


def test_run_compares_full_and_step(capsys):
    assert main(["run", GLA, "-T", "5", "--dtype", "float64", "--set", "K=4", "--set", "V=4"]) == 0
    out = capsys.readouterr().out
    diffs = [float(x) for x in re.findall(r"max \|full - step\| = (\S+)", out)]
    assert len(diffs) == 2 and max(diffs) < 1e-12
    assert "out   o: [2, 5, 4, 4]" in out and "tokens/s" in out


def test_bench_times_every_supported_backend(capsys):
    spec = str(Path(GLA).parent / "min_gru.rec")
    assert main(["bench", spec, "-T", "8", "-B", "2", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(sequential|scan)\s+[\d.]+ms\s+[\d.]+ms\s+(\S+)\s+(\S+)$", out,
                      re.MULTILINE)
    assert [r[0] for r in rows] == ["sequential", "scan"] and float(rows[1][1]) < 1e-5
    assert float(rows[1][2]) < 1e-6 and "relative: max |y - sequential| / max |sequential|" in out


COMPLEX = "cell z(N = 3):\n    input x[N]\n    state h[N]: complex = 0\n" \
    "    h[n] <- exp(-0.5 + 1j) * h[n] + x[n]\n    out y[n] = h[n]\n"


def test_bench_runs_cells_with_complex_outputs(tmp_path, capsys):
    spec = tmp_path / "z.rec"
    spec.write_text(COMPLEX)
    assert main(["bench", str(spec), "-T", "8", "-B", "2", "--repeat", "1"]) == 0
    rows = re.findall(r"^\s+(\w+)\s+[\d.]+ms\s+[\d.]+ms\s+(\S+)\s+(\S+)$",
                      capsys.readouterr().out, re.MULTILINE)
    assert len(rows) >= 2 and all(float(r[2]) < 1e-5 for r in rows)


def test_run_prints_relative_differences(capsys):
    assert main(["run", GLA, "-T", "4", "--set", "K=4", "--set", "V=4"]) == 0
    out = capsys.readouterr().out
    found = re.findall(r"max \|full - step\| = (\S+) \(relative (\S+), max \|full\| = (\S+)\)",
                       out)
    assert len(found) == 2
    for diff, relative, scale in found:
        assert abs(float(relative) - float(diff) / float(scale)) <= 0.05 * float(relative) + 1e-30


def test_bench_on_cuda_without_cuda_is_one_line(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", GLA, "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err == f"{GLA}: error: --device cuda: CUDA is not available to this torch " \
                  f"({torch.__version__})\n"


def test_version(capsys):
    import pytest

    import reclang

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"reclang {reclang.__version__}\n"


def test_every_error_names_the_file(tmp_path, capsys):
    assert main(["inspect", GLA, "--backend", "fast"]) == 1
    assert capsys.readouterr().err.startswith(f"{GLA}: error: unknown backend 'fast'")
    assert main(["check", GLA, "--set", "K"]) == 1
    assert capsys.readouterr().err.startswith(f"{GLA}: error: --set: hyperparameters are given")
    assert main(["check", GLA, "--set", "K=x"]) == 1
    assert capsys.readouterr().err.startswith(f"{GLA}: error: --set: K must be a number")
    missing = tmp_path / "missing.rec"
    assert main(["check", str(missing)]) == 1
    assert capsys.readouterr().err.startswith(f"{missing}: error: cannot read")


GROWS = """cell grows(D = 8):
    input x[D]
    state h[D] = 0
    h[d] <- 3 * x[d] * h[d] + 1
    out y[d] = h[d]
"""  # a decay 3x of normal x: |3x| has a log mean of about 0.46, so h overflows


def test_run_draws_log_gates_at_most_zero_and_says_when_other_inputs_diverge(capsys, tmp_path):
    hgrn = str(Path(GLA).parent / "hgrn.rec")  # a log gate: drawn <= 0 (reclang/samples.py)
    assert main(["run", hgrn, "-T", "1024"]) == 0
    out, err = capsys.readouterr()
    sizes = [float(x) for x in re.findall(r"max \|full\| = (\S+)\)", out)]
    assert len(sizes) == 2 and max(sizes) < 100 and err == ""
    grows = tmp_path / "grows.rec"
    grows.write_text(GROWS)
    assert main(["run", str(grows), "-T", "1024"]) == 0
    out, err = capsys.readouterr()
    assert "= nan" in out and "note: some outputs are not finite" in err and "--scale" in err
    assert main(["run", str(grows), "-T", "1024", "--scale", "0.1"]) == 0
    out, err = capsys.readouterr()
    diffs = [float(x) for x in re.findall(r"max \|full - step\| = (\S+)", out)]
    assert len(diffs) == 2 and max(diffs) < 1e-4 and err == ""
