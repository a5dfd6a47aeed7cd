"""Every spec of the catalogue gets the form that docs/analysis.md lists for it (the
table is parsed from the document, so the two cannot drift apart), and the key facts
that the issue tracker asks for hold."""

import re
from pathlib import Path

import pytest

import reclang

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `(\w+)` \| `([\w-]+)` \| (.+) \|$")


def table() -> dict[str, tuple[str, str]]:
    text = (ROOT / "docs" / "analysis.md").read_text()
    return {m.group(1): (m.group(2), m.group(3)) for line in text.splitlines()
            if (m := ROW.match(line))}


def plan(name, **hypers):
    return reclang.load(ROOT / "specs" / f"{name}.rec", **hypers).plan


def test_table_lists_every_spec():
    assert sorted(table()) == sorted(p.stem for p in (ROOT / "specs").glob("*.rec"))


@pytest.mark.parametrize("name", sorted(table()))
def test_spec_has_the_documented_form(name):
    form, summary = table()[name]
    p = plan(name)
    assert (p.form, p.summary) == (form, summary)


@pytest.mark.parametrize("names, form", [
    (["min_gru", "hgrn", "rg_lru", "mamba_s6"], "diag"),
    (["s4d", "lru"], "diag-lti"),
    (["gla", "simple_gla", "retnet", "linear_attn", "mamba2", "mlstm", "rwkv6", "hgrn2"],
     "mat-decay"),
    (["delta_net", "gated_delta_net", "delta_product", "rwkv7"], "dplr"),
    (["aaren"], "associative"),
    (["titans"], "coupled"),
    (["lstm", "gru", "elman", "slstm", "lmu", "para_gru", "para_lstm", "indrnn"], "nonlinear"),
    (["rwkv4"], "nonlinear"),  # issue 18's layers
    (["s4", "lssl"], "dense"),
    (["qrnn", "mamba_block"], "diag"),
    (["rwkv6_tokenshift"], "mat-decay"),
    (["kda"], "dplr"),
])
def test_forms_the_issue_asks_for(names, form):
    assert {n: plan(n).form for n in names} == {n: form for n in names}


def test_key_structural_facts():
    assert plan("lstm").states[0].jacobian == "dense"
    assert plan("slstm").states[0].jacobian.startswith("block-diagonal")
    assert plan("delta_product").states[0].transition.rank == 2
    assert plan("delta_product", NH=3).states[0].transition.rank == 3
    assert [s.transition.rank for s in plan("rwkv7").states] == [1]
    assert plan("gla").states[0].transition.decay_axes == ("h", "i")
    assert plan("retnet").states[0].transition.time_invariant
    assert plan("mlstm").readouts[0].kind == "pointwise"
    assert "previous" in plan("rwkv6").readouts[0].reads[0]
