"""Locations everywhere: a Loc names its file, an unexpected failure inside any pass is
reported at the spec node it was working on, and an exception raised inside generated
code names the spec line it comes from."""

import dataclasses
import pickle
import traceback

import pytest
import torch

import reclang
from reclang import RecError, generated
from reclang.analysis import plan as plan_module
from reclang.analysis import terms
from reclang.analysis.terms import Expander, NotAffine
from reclang.ast_to_ir import build_ir
from reclang.ast_to_ir.expressions import Expressions
from reclang.cli import main
from reclang.codegen.ir_to_torch import ExprLowering, Place
from reclang.errors import Loc
from reclang.ir import Op
from reclang.parser import ToAst, parse

SPEC = """cell c(D = 3):
    input x[D], g[D]
    state h[D] = 0
    h[d] <- exp(g[d]) * h[d] + x[d]
    out y = sum(d: h[d] * x[d])
"""
UPDATE = "    h[d] <- exp(g[d]) * h[d] + x[d]"
OUT = "    out y = sum(d: h[d] * x[d])"


def boom(*args, **kwargs):
    raise ValueError("boom")


def assert_internal(err: RecError, stage: str, line: int, col: int, text: str):
    """The user sees `spec.rec:L:C: error: internal error in <stage>: ...`, the spec
    line and a caret under column C."""
    first, shown, caret = str(err).split("\n")[:3]
    assert first.startswith(f"spec.rec:{line}:{col}: error: internal error in {stage}: "), first
    assert "ValueError: boom" in first
    assert shown == "    " + text and caret == "    " + " " * (col - 1) + "^"


def test_a_loc_knows_its_file_and_renders_without_a_source():
    cell = parse(SPEC, "spec.rec")
    loc = cell.body[-1].loc
    assert loc.file == "spec.rec" and loc == Loc(5, 9)  # equality is the position
    err = RecError("made far from the parser", loc=loc)
    assert str(err) == f"spec.rec:5:9: error: made far from the parser\n    {OUT}\n            ^"


def test_internal_error_in_parse(monkeypatch):
    monkeypatch.setattr(ToAst, "call", boom)
    with pytest.raises(RecError) as err:
        parse(SPEC, "spec.rec")
    assert_internal(err.value, "parse", 4, 13, UPDATE)  # exp(...)


def test_internal_error_in_ast_to_ir(monkeypatch):
    monkeypatch.setattr(Expressions, "expr_reduce", boom)
    with pytest.raises(RecError) as err:
        reclang.loads(SPEC, "spec.rec")
    assert_internal(err.value, "ast_to_ir", 5, 9, OUT)  # the statement


def test_an_unknown_expression_is_refused_at_its_node():
    @dataclasses.dataclass(frozen=True)
    class Strange:
        loc: Loc

    cell = parse(SPEC, "spec.rec")
    out = cell.body[-1]
    odd = dataclasses.replace(out, value=Strange(out.value.loc))
    cell = dataclasses.replace(cell, body=(*cell.body[:-1], odd))
    with pytest.raises(RecError) as err:
        build_ir(cell)
    assert str(err.value).startswith("spec.rec:5:13: error: internal error in ast_to_ir: "
                                     "no rule lowers a Strange expression")


def test_internal_error_in_analysis(monkeypatch):
    monkeypatch.setattr(plan_module, "analyze_state", boom)
    cell = reclang.loads(SPEC, "spec.rec")
    with pytest.raises(RecError) as err:
        cell.plan  # noqa: B018 (the plan is made when first read)
    assert_internal(err.value, "analysis", 4, 5, UPDATE)


def test_internal_error_in_lowering_at_the_node(monkeypatch):
    monkeypatch.setattr(ExprLowering, "lower_reduce", boom)
    cell = reclang.loads(SPEC, "spec.rec")
    with pytest.raises(RecError) as err:
        cell.source("sequential")
    assert_internal(err.value, "lowering", 5, 13, OUT)  # sum(...)


def test_internal_error_in_a_backend_names_it(monkeypatch):
    from reclang.backends import base

    cell = reclang.loads(SPEC, "spec.rec")
    monkeypatch.setattr(type(base.claimant(cell.plan, "sequential")), "lower", boom)
    with pytest.raises(RecError) as err:
        cell.source("sequential")
    assert str(err.value) == ("spec.rec: error: internal error in lowering (sequential): "
                              "ValueError: boom")


def test_internal_error_in_loading(monkeypatch):
    monkeypatch.setattr(generated, "_execute", boom)
    cell = reclang.loads(SPEC.replace("D = 3", "D = 5"), "spec.rec")  # not loaded before
    with pytest.raises(RecError) as err:
        cell.module("sequential")
    assert str(err.value).startswith("spec.rec: error: internal error in loading: ValueError")


def test_the_torch_printer_refuses_an_op_it_has_no_rule_for():
    ir = reclang.loads(SPEC, "spec.rec").ir
    lowering = ExprLowering(ir, dict.fromkeys(ir.graph.nodes, Place.LOOP),
                            {p: [] for p in Place})
    with pytest.raises(RecError, match="^spec.rec:2:11: error: internal error in lowering: "
                       "NotImplementedError: no rule prints a input node as PyTorch"):
        lowering.code(ir.leaves["x"], Place.LOOP)


def test_the_affine_expander_refuses_at_the_node_what_it_has_no_rule_for(monkeypatch):
    ir = reclang.loads(SPEC, "spec.rec").ir
    update = next(i for i in ir.stmts if ir.node(i).op == Op.UPDATE)
    monkeypatch.delattr(Expander, "terms_fn")  # as if FN were an op it was never taught
    with pytest.raises(NotAffine, match="no affine rule for a fn node") as err:
        Expander(ir).terms(update, {"d": None})
    assert err.value.node.op == Op.FN and err.value.node.loc.line == 4
    monkeypatch.delitem(terms.SYMPY, "exp")  # a function with no sympy spelling
    with pytest.raises(NotAffine, match="exp has no symbolic form"):
        Expander(ir).symbolic(ir.node(update).args[0], {"d": None})


# ---- origins of generated lines ----------------------------------------------------------
def test_origins_map_generated_lines_to_spec_statements():
    cell = reclang.loads(SPEC, "spec.rec")
    source = cell.source("sequential")
    found = generated.origins(source, cell.ir.source)
    lines = source.split("\n")
    update = next(n for n, text in enumerate(lines, 1) if text.strip().startswith("h = "))
    assert found[update] == Loc(4, 5) and found[update].file == "spec.rec"
    assert not any(lines[n - 1].lstrip().startswith(("def ", "import ")) for n in found)
    shown = generated.with_origins(source, cell.ir.source).split("\n")
    assert shown[update - 1].startswith("spec.rec:4:5 | ") and shown[update - 1].endswith(
        lines[update - 1])


def failing_einsum(*args, **kwargs):
    raise RuntimeError("einsum failed")


@pytest.mark.parametrize("call", ["forward", "step"])
def test_an_exception_in_generated_code_names_the_spec_line(monkeypatch, call):
    m = reclang.loads(SPEC, "spec.rec").module("sequential")
    inputs = {"x": torch.randn(2, 4, 3), "g": torch.randn(2, 4, 3)}
    if call == "step":
        inputs = {k: v[:, 0] for k, v in inputs.items()}
    monkeypatch.setattr(torch, "einsum", failing_einsum)
    with pytest.raises(RuntimeError, match="einsum failed") as err:
        getattr(m, call)(**inputs)
    assert err.value.__notes__ == [f"in spec.rec:5:5: {OUT.strip()}"]
    assert f"in spec.rec:5:5: {OUT.strip()}" in "".join(traceback.format_exception(err.value))


class WithoutNotes(RuntimeError):
    """An exception as Python 3.10 makes them: no add_note."""

    @property
    def add_note(self):
        raise AttributeError("add_note")


def test_without_notes_the_origin_is_the_cause(monkeypatch):
    m = reclang.loads(SPEC, "spec.rec").module("sequential")

    def fails(*args, **kwargs):
        raise WithoutNotes("einsum failed")

    monkeypatch.setattr(torch, "einsum", fails)
    with pytest.raises(WithoutNotes) as err:
        m(x=torch.randn(1, 2, 3), g=torch.randn(1, 2, 3))
    assert isinstance(err.value.__cause__, RecError)
    assert str(err.value.__cause__) == ("spec.rec:5:5: error: the generated code failed in "
                                        f"this statement\n    {OUT}\n        ^")


def test_a_copied_module_keeps_its_origins(monkeypatch):
    m = pickle.loads(pickle.dumps(reclang.loads(SPEC, "spec.rec").module("sequential")))
    monkeypatch.setattr(torch, "einsum", failing_einsum)
    with pytest.raises(RuntimeError) as err:
        m(x=torch.randn(1, 2, 3), g=torch.randn(1, 2, 3))
    assert err.value.__notes__ == [f"in spec.rec:5:5: {OUT.strip()}"]


def test_an_error_outside_generated_code_gets_no_note():
    m = reclang.loads(SPEC, "spec.rec").module("sequential")
    with pytest.raises(Exception) as err:
        m(x=torch.randn(2, 4, 3), g=torch.randn(2, 4, 2))
    assert not getattr(err.value, "__notes__", None)


def test_inspect_shows_origins(tmp_path, capsys):
    spec = tmp_path / "spec.rec"
    spec.write_text(SPEC)
    assert main(["inspect", str(spec), "--origins"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("spec.rec:4:5 |         h = ") for line in out.split("\n"))
