"""Text from outside the spec's tokens (the file name, the spec's comments) reaches
generated source only through one escaping, backends/torch_expr.comment: a file name or
a comment holding a line break of any kind, a NUL, a lone surrogate or a docstring's
quotes never runs as code, and the generated source compiles with exactly the lines it
has for a plain file name and no comments."""

from __future__ import annotations

import ast
import builtins

import pytest
import torch
from helpers import SMALL, SPECS, catalogue_cell, catalogue_names, random_inputs

import reclang
from reclang.codegen.ir_to_torch import comment

# every character Python or str.splitlines takes for a line break, the ones Python
# refuses in source (NUL) or UTF-8 cannot write (lone surrogates), and escapes and quotes
BREAKS = ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
UNWRITABLE = ["\0", "\ud800", "\udfff", "\x7f", "\x1b"]
QUOTES = ['"""', "\\", "'''"]
FLAG = "reclang_escaping_payload_ran"
PAYLOAD = f"import builtins; builtins.{FLAG} = True; import os; os._exit(3)"


def hostile(separators) -> str:
    return "".join(f"{s}{PAYLOAD}{s}" for s in separators) + "".join(QUOTES)


@pytest.mark.parametrize("char", BREAKS + UNWRITABLE + QUOTES, ids=ascii)
def test_comment_is_one_printable_line(char):
    original = f"a{char}{PAYLOAD}{char}b"
    text = comment(original)
    assert text.isprintable() and '"' not in text
    text.encode("utf-8")  # writable
    assert len(f"# {text}".splitlines()) == 1
    source = f"# {text}\ndef f():\n    \"\"\"{text}\"\"\"\n"
    compile(source, "comment", "exec")
    function = ast.parse(source).body[0]
    assert ast.get_docstring(function, clean=False) == original  # reads back as it was


def test_comment_keeps_printable_text():
    assert comment("gla.rec:12: S[h, i, j] <- exp(g[h, i]) * S  # the paper's (3) σ") == \
        "gla.rec:12: S[h, i, j] <- exp(g[h, i]) * S  # the paper's (3) σ"


def with_comments(text: str, note: str) -> str:
    """The spec with `note` as a trailing comment of every line of the cell's body."""
    lines = text.split("\n")
    start = next(k for k, line in enumerate(lines) if line.startswith("cell "))
    return "\n".join(line + f"  # {note}" if k > start and line.strip() else line
                     for k, line in enumerate(lines))


def code_lines(source: str) -> list[str]:
    return [line for line in source.split("\n") if not line.lstrip().startswith("#")]


def lines_differ_only_in_comments(plain: str, odd: str, name: str):
    """The same code lines (docstrings included) as the plain source, comment lines
    apart (a long comment may wrap), no line break but \\n, and the file name shown."""
    assert odd.splitlines() == odd.removesuffix("\n").split("\n"), "a line break besides \\n"
    assert code_lines(odd) == code_lines(plain)
    assert f"from {name}: cell " in odd.split("\n")[0]


CASES = [(name, backend) for name in catalogue_names()
         for backend in ("sequential", "scan", "chunk", "fft", "triton")
         if catalogue_cell(name).supports(backend)]


@pytest.fixture(scope="module")
def cells():
    """Per spec: the cell as it is (file spec.rec) and with a hostile file name and
    hostile comments on every line (a comment cannot hold \\n: it would end it)."""
    made = {}
    name = hostile(BREAKS + UNWRITABLE) + ".rec"
    note = hostile([c for c in BREAKS + UNWRITABLE if "\n" not in c])
    for stem in {stem for stem, _ in CASES}:
        text = (SPECS / f"{stem}.rec").read_text()
        hypers = {k: v for k, v in SMALL.items() if k in reclang.loads(text).hypers}
        made[stem] = (reclang.loads(text, "spec.rec", **hypers),
                      reclang.loads(with_comments(text, note), name, **hypers),
                      comment(name))
    return made


@pytest.mark.parametrize("stem, backend", CASES)
def test_outside_text_never_runs_and_keeps_the_lines(cells, stem, backend):
    plain, odd, name = cells[stem]
    source = odd.source(backend)
    compile(source, "generated", "exec")
    lines_differ_only_in_comments(plain.source(backend), source, name)
    if backend == "triton":
        return  # the source text only: its kernels run in tests/test_backend_triton.py
    torch.manual_seed(0)
    m = odd.module(backend).double()
    m(**random_inputs(m, 1, 2))
    m.step(**random_inputs(m, 1, None))
    assert not hasattr(builtins, FLAG)


def test_echoed_spec_lines_are_the_lines_the_parser_counts():
    """str.splitlines broke at a U+2028, \\v or \\f inside a comment: every later spec
    line was echoed one line off (and error carets showed the wrong line)."""
    text = "cell c(N = 2):\n    input x[N]  # a\u2028b\vc\fd\x85e\n    out y[n] = 2 * x[n]\n"
    source = reclang.loads(text, "s.rec").source("sequential")
    assert "    # s.rec:3: out y[n] = 2 * x[n]\n" in source
    with pytest.raises(reclang.RecError) as err:
        reclang.loads(text.replace("2 * x[n]", "2 * z[n]"), "s.rec")
    assert "\n        out y[n] = 2 * z[n]\n" in str(err.value)
