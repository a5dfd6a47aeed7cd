"""parse(format(ast)) == ast: on the whole catalogue and on random expressions."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reclang import ast
from reclang.errors import NOWHERE
from reclang.parser import parse
from reclang.printer import format_cell, format_expr

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.rec"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_catalogue_round_trips(path):
    cell = parse(path.read_text(), path.name)
    assert parse(format_cell(cell)) == cell


names = st.sampled_from(["x", "y", "K", "h"]).map(lambda n: ast.Name(n, NOWHERE))
leaves = st.one_of(
    names,
    st.integers(0, 9).map(lambda v: ast.Num(v, NOWHERE)),
    st.floats(0.01, 100, allow_nan=False).map(lambda v: ast.Num(v, NOWHERE)),
    st.floats(0.5, 3).map(lambda v: ast.Imag(v, NOWHERE)),
    st.tuples(st.sampled_from(["q", "S"]), st.lists(names, min_size=1, max_size=3)).map(
        lambda t: ast.Subscript(t[0], tuple(t[1]), NOWHERE)),
)


def extend(children):
    binary = st.tuples(st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "<", "=="]), children,
                       children).map(lambda t: ast.Binary(t[0], t[1], t[2], NOWHERE))
    unary = children.map(lambda c: ast.Unary("-", c, NOWHERE))
    call = st.tuples(st.sampled_from(["exp", "max", "where"]),
                     st.lists(children, min_size=1, max_size=3)).map(
        lambda t: ast.Call(t[0], tuple(t[1]), NOWHERE))
    reduce = st.tuples(st.sampled_from(["sum", "max", "softmax"]),
                       st.lists(names, min_size=1, max_size=2),
                       children).map(lambda t: ast.Reduce(t[0], tuple(t[1]), t[2], NOWHERE))
    return st.one_of(binary, unary, call, reduce)


expressions = st.recursive(leaves, extend, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(expressions)
def test_random_expressions_round_trip(e):
    text = f"cell c(N = 1):\n    out y = {format_expr(e)}\n"
    assert parse(text).body[0].value == e
