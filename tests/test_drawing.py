"""`reclang graph` pictures through Graphviz, and `reclang bench --plot`."""

import shutil

import pytest
from helpers import SPECS

from reclang.cli import main

MAMBA = str(SPECS / "mamba_s6.rec")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (apt-get install graphviz)")


@needs_dot
def test_graph_writes_a_real_svg(tmp_path, capsys):
    target = tmp_path / "g.svg"
    assert main(["graph", MAMBA, "-o", str(target)]) == 0
    svg = target.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
    for text in ("prelude", "core", "epilogue", "state s", "s&#39; (new s)", "softplus",
                 "[d=64, n=16]", "next step"):
        assert text in svg, text
    assert f"wrote {target}" in capsys.readouterr().out


@needs_dot
@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_graph_writes_png_and_pdf(tmp_path, suffix, magic):
    target = tmp_path / f"g{suffix}"
    assert main(["graph", MAMBA, "-o", str(target)]) == 0
    assert target.read_bytes().startswith(magic)


def test_graph_dot_text_has_the_partition_and_the_recurrence(tmp_path, capsys):
    assert main(["graph", MAMBA]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "mamba_s6"')
    for cluster in ("cluster_const", "cluster_prelude", "cluster_core", "cluster_epilogue"):
        assert f"subgraph {cluster}" in dot
    assert 'label="s\' (new s)\\n[d=64, n=16]", shape=doubleoctagon' in dot
    assert 'label="next step"' in dot
    target = tmp_path / "g.dot"
    assert main(["graph", MAMBA, "-o", str(target)]) == 0
    assert target.read_text() == dot


def test_graph_without_dot_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["graph", MAMBA, "-o", str(tmp_path / "g.svg")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{MAMBA}: error: -o {tmp_path / 'g.svg'}: Graphviz's `dot` is not "
                          "installed (Debian, Ubuntu: apt-get install graphviz")
    assert not (tmp_path / "g.svg").exists()


def test_graph_refuses_an_unknown_format(tmp_path, capsys):
    assert main(["graph", MAMBA, "-o", str(tmp_path / "g.jpeg")]) == 1
    assert "the picture formats are .svg, .png, .pdf" in capsys.readouterr().err


def test_bench_plots_time_against_T(tmp_path, capsys):
    target = tmp_path / "bench.png"
    spec = str(SPECS / "min_gru.rec")
    assert main(["bench", spec, "-T", "4", "16", "-B", "1", "--repeat", "1",
                 "--device", "cpu", "--plot", str(target)]) == 0
    out = capsys.readouterr().out
    assert out.count("cell min_gru (diag), B=1, T=") == 2 and f"wrote {target}" in out
    assert target.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("spec", sorted(p.name for p in SPECS.glob("*.rec")))
def test_graph_draws_every_catalogue_spec(spec, capsys):
    """Every spec draws (constant subscripts such as z[1, n] label their edges)."""
    assert main(["graph", str(SPECS / spec)]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    if spec == "lstm.rec":
        assert 'label="[1, n]"' in dot
