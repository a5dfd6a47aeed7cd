"""Text to AST: layout rules, literals, precedence, positions."""

import pytest

from reclang import ast
from reclang.errors import Loc
from reclang.parser import parse


def body(text: str):
    return parse("cell c(N = 2):\n" + text).body


def value(expr_text: str):
    return body(f"    out y = {expr_text}\n")[0].value


def test_positions_are_one_based_line_and_column():
    stmt = body("    input x[N]\n    out y[n] = x[n]\n")[1]
    assert stmt.loc == Loc(3, 9) and stmt.value.loc == Loc(3, 16)


def test_continuation_lines_and_brackets_join_statements():
    joined = body("    out y[n] = x[n]\n        + x[n] * (2\n  + 1)\n")
    flat = body("    out y[n] = x[n] + x[n] * (2 + 1)\n")
    assert joined == flat and len(joined) == 1


def test_comments_and_blank_lines_are_ignored():
    text = "# header\n\ncell c(N = 2):   # trailing\n    # comment line\n\n    input x[N]  # note\n"
    cell = parse(text)
    assert cell.name == "c" and len(cell.body) == 1


def test_precedence_and_associativity():
    e = value("-a ** 2 * b + c / d - e")
    # ((-(a ** 2)) * b + c / d) - e
    assert isinstance(e, ast.Binary) and e.op == "-"
    left = e.left
    assert left.op == "+" and left.left.op == "*" and left.left.left.op == "-"
    assert left.left.left.operand.op == "**"
    assert value("2 ** -0.5").right == ast.Unary("-", ast.Num(0.5, Loc(0, 0)), Loc(0, 0))
    assert value("a ** b ** c").right.op == "**"  # right-associative


def test_numbers_imaginary_and_comparisons():
    assert value("3") == ast.Num(3, Loc(0, 0)) and isinstance(value("3").value, int)
    assert value("1.5e-3").value == 1.5e-3
    assert value("2j") == ast.Imag(2.0, Loc(0, 0))
    assert value("a <= b").op == "<="


def test_reductions_with_several_indices():
    e = value("sum(i, j: A[i, j])")
    assert isinstance(e, ast.Reduce) and [b.name for b in e.binders] == ["i", "j"]
    assert isinstance(value("max(a, b)"), ast.Call)


def test_declarations():
    stmts = body("    input x[N], g[N]\n    param W[N, N], U[N] ~ normal(0, 1)\n"
                 "    param b[N] = 0, c[i: N] = i\n    state h[N]: complex = 0, m[N]\n")
    inp, p1, p2, st = stmts
    assert [t.name for t in inp.tensors] == ["x", "g"]
    assert all(i.random for i in p1.inits) and p1.inits[0] == p1.inits[1]
    assert [i.random for i in p2.inits] == [False, False]
    assert p2.tensors[1].dims[0].index == "i"
    assert st.tensors[0].dtype == "complex" and st.inits[1] is None


def test_target_forms():
    lets = body("    a = 1\n    b[i: N, j] = 2\n    s[n] <- 3\n    out o[n] = 4\n")
    assert [s.kind for s in lets] == ["let", "let", "update", "out"]
    assert lets[1].indices[0].size == ast.Name("N", Loc(0, 0)) and lets[1].indices[1].size is None


@pytest.mark.parametrize("keyword", ["input", "param", "state", "out", "cell"])
def test_keywords_are_not_names(keyword):
    import reclang
    with pytest.raises(reclang.RecError, match=f"'{keyword}' is a keyword"):
        reclang.loads(f"cell c(N = 2):\n    input {keyword}[N]\n    out y[n] = {keyword}[n]\n")
