"""Every user mistake gives a RecError with the right message and position."""

import pytest

import reclang
from reclang import RecError

HEADER = """cell c(H = 2, K = 4, V = 3):
    input q[H, K], k[H, K], v[H, V], g[H, K]
    param u[H, K] ~ normal(0, 1)
    state S[H, K, V] = 0
"""  # statements below start at line 5
UPDATE = "    S[h, i, j] <- S[h, i, j] + k[h, i] * v[h, j]\n"
OUT = "    out o[h, j] = sum(i: q[h, i] * S[h, i, j])\n"

# (case, body, message fragment, line, column)
CASES = [
    ("missing ]", "    S[h, i, j] <- S[h, i, j + k[h, i] * v[h, j]\n" + OUT,
     "this '[' is never closed", 5, 20),
    ("missing )", "    S[h, i, j] <- exp(g[h, i] * S[h, i, j]\n" + OUT,
     "this '(' is never closed", 5, 22),
    ("wrong closing bracket", "    S[h, i, j] <- exp(g[h, i) * S[h, i, j]\n" + OUT,
     "missing ']' before ')'", 5, 29),
    ("= instead of <- for a state", "    S[h, i, j] = S[h, i, j] + k[h, i] * v[h, j]\n" + OUT,
     "S is a state: update it with `<-`", 5, 5),
    ("= inside an expression", "    S[h, i, j] <- where(g[h, i] = 0, S[h, i, j], 0)\n" + OUT,
     "write '==' to compare", 5, 33),
    ("incomplete expression", "    S[h, i, j] <- S[h, i, j] +\n" + OUT,
     "the statement is incomplete", 5, 31),
    ("unexpected character", "    S[h, i, j] <- S[h, i, j] $ 2\n" + OUT,
     "unexpected character '$'", 5, 30),
    ("unknown function", "    S[h, i, j] <- expp(g[h, i]) * S[h, i, j]\n" + OUT,
     "unknown function 'expp'; did you mean 'exp'?", 5, 19),
    ("unknown name", "    S[h, i, j] <- S[h, i, j] + kk[h, i] * v[h, j]\n" + OUT,
     "unknown name 'kk'; did you mean 'k'?", 5, 32),
    ("wrong number of indices", "    S[h, i, j] <- S[h, i] + k[h, i] * v[h, j]\n" + OUT,
     "S has 3 axes but 2 indices are given", 5, 19),
    ("unbound index", UPDATE + "    out o[h, j] = q[h, i] * S[h, i, j]\n",
     "index i is neither on the left of '=' nor bound by sum(i: ...)", 6, 24),
    ("size mismatch", "    S[h, i, j] <- S[h, i, j] + k[h, i] * v[h, i]\n" + OUT,
     "index i ranges over 4 but axis 1 of v has size 3", 5, 47),
    ("state updated twice", UPDATE + "    S[h, i, j] <- S[h, i, j]\n" + OUT,
     "state S is updated twice (first at line 5)", 6, 5),
    ("state never updated", OUT, "state S is never updated", 4, 11),
    ("assignment to an input", "    q[h, i] = k[h, i]\n" + UPDATE + OUT,
     "q is an input: inputs cannot be assigned", 5, 5),
    ("assignment to a param", "    u[h, i] = k[h, i]\n" + UPDATE + OUT,
     "u is a param: params cannot be assigned", 5, 5),
    ("<- on an input", UPDATE + "    q[h, i] <- k[h, i]\n" + OUT,
     "only states are updated with `<-`; q is an input", 6, 5),
    ("no output", UPDATE, "the cell has no output", 1, 1),
    ("use before definition", "    S[h, i, j] <- S[h, i, j] + w[h, i] * v[h, j]\n"
     "    w[h, i] = k[h, i]\n" + OUT, "w is used before it is defined (line 6)", 5, 32),
    ("unused reduction index", UPDATE + "    out o[h, j] = sum(i, l: q[h, i] * S[h, i, j])\n",
     "index l is reduced but not used", 6, 26),
    ("left index without a size", UPDATE + "    out o[h, j, l] = sum(i: q[h, i] * S[h, i, j])\n",
     "index l is not used on the right", 6, 17),
    ("subscript out of range", UPDATE + "    out o[h, j] = S[h, 5, j]\n",
     "subscript 5 is out of range for axis 1 of S (size 4)", 6, 24),
    ("random draw outside an initializer",
     "    S[h, i, j] <- S[h, i, j] * uniform(0, 1)\n" + OUT,
     "uniform(...) can only appear in the initializer", 5, 32),
    ("complex value into a real state", "    S[h, i, j] <- S[h, i, j] * 1j\n" + OUT,
     "the new value of S is complex but the state is real", 5, 19),
    ("wrong number of arguments", "    S[h, i, j] <- exp(S[h, i, j], 2)\n" + OUT,
     "exp() takes 1 argument, got 2", 5, 19),
    ("where without a comparison", "    S[h, i, j] <- where(g[h, i], S[h, i, j], 0)\n" + OUT,
     "the first argument of where(...) must be a comparison", 5, 25),
    ("index shadows a tensor", "    S[h, k, j] <- S[h, k, j]\n" + OUT,
     "index k has the same name as a hyperparameter or tensor", 5, 10),
    ("reduction over an index of the result", UPDATE +
     "    out o[h, j] = sum(j: q[h, j] * S[h, j, j])\n", "index j is reduced here but", 6, 23),
]


def spec(body: str) -> str:
    return HEADER + body


@pytest.mark.parametrize("case, body, message, line, col", CASES, ids=[c[0] for c in CASES])
def test_error(case, body, message, line, col):
    with pytest.raises(RecError) as info:
        reclang.loads(spec(body), "c.rec")
    err = info.value
    assert message in err.message, str(err)
    assert (err.loc.line, err.loc.col) == (line, col), str(err)


def test_rendering_shows_file_line_caret():
    with pytest.raises(RecError) as info:
        reclang.loads(spec("    S[h, i, j] <- S[h, i, j] + kk[h, i] * v[h, j]\n" + OUT), "c.rec")
    lines = str(info.value).splitlines()
    assert lines[0] == "c.rec:5:32: error: unknown name 'kk'; did you mean 'k'?"
    assert lines[1] == "    " + "    S[h, i, j] <- S[h, i, j] + kk[h, i] * v[h, j]"
    assert lines[2] == "    " + " " * 31 + "^"


def test_semantic_errors_are_collected_together():
    body = ("    S[h, i, j] <- S[h, i, j] + kk[h, i] * v[h, j]\n"
            "    w[h] = foo(q[h, 0])\n"
            "    out o[h, j] = sum(i: q[h, i] * S[h, i, j]) + z\n")
    with pytest.raises(RecError) as info:
        reclang.loads(spec(body), "c.rec")
    found = [(d.loc.line, d.message.split(";")[0]) for d in info.value.diagnostics]
    assert found == [(5, "unknown name 'kk'"), (6, "unknown function 'foo'"),
                     (7, "index z is neither on the left of '=' nor bound by sum(z: ...)")]


@pytest.mark.parametrize("hypers, message", [
    (dict(H=2.5), "hyperparameter H is an integer (default 2), got 2.5"),
    (dict(H="a"), "hyperparameter H must be a number, got str 'a'"),
    (dict(H=True), "hyperparameter H must be a number, got bool True"),
    (dict(Q=1), "cell c has no hyperparameter 'Q' (it has: H, K, V)"),
    (dict(K=0), "a dimension must be a positive integer, got 0"),
])
def test_hyperparameter_errors_at_load(hypers, message):
    with pytest.raises(RecError) as info:
        reclang.loads(spec(UPDATE + OUT), "c.rec", **hypers)
    assert message in info.value.message
    assert info.value.loc.line in (1, 2)


def test_integer_valued_float_is_accepted_for_an_int_hyper():
    cell = reclang.loads(spec(UPDATE + OUT), "c.rec", H=3.0)
    assert cell.hypers["H"] == 3 and isinstance(cell.hypers["H"], int)


@pytest.mark.parametrize("text, message", [
    ("cell c(D = 4):\n    input x[D]\n    param W[D] \n    out y[d] = W[d] * x[d]\n",
     "param W needs an initializer"),
    ("cell c(D = 4):\n    input x[D]\n    param W[D] = normal(0, q)\n    out y[d] = W[d] * x[d]\n",
     "an initializer may use numbers, hyperparameters, params"),
    ("cell c(D = 4):\n    input x[D]\n    input x[D]\n    out y[d] = x[d]\n",
     "'x' is already declared as an input at line 2"),
    ("cell c(D = 4):\n    input exp[D]\n    out y[d] = exp[d]\n",
     "'exp' is a built-in function"),
    ("cell c(D):\n    input x[D]\n    out y[d] = x[d]\n", "hyperparameter D has no default"),
    ("cell c(D = 4):\n    state h[D] = 0\n    h[d] <- h[d]\n    out y[d] = h[d]\n",
     "the cell has no input"),
    ("cell c(D = 4):\n    input x[D]\n    y[d] = x[d]\n    y[d] = x[d]\n    out o[d] = y[d]\n",
     "y is already defined at line 3"),
    ("cell c(D = 4.5):\n    input x[D]\n    out y[d] = x[d]\n",
     "a dimension must be a positive integer, got 4.5"),
    ("cell c(D = 4):\n    input x[D]\n    out y[d] = x[d] < 0\n", "a comparison gives true/false"),
    ("cell c(D = 4):\n    input x[D]\n    out y = _x\n", "names start with a letter"),
])
def test_declaration_errors(text, message):
    with pytest.raises(RecError) as info:
        reclang.loads(text, "d.rec")
    assert message in str(info.value)
    assert str(info.value).startswith("d.rec:")


def test_missing_file_is_a_rec_error(tmp_path):
    with pytest.raises(RecError, match="cannot read"):
        reclang.load(tmp_path / "nope.rec")


def test_unknown_backend():
    cell = reclang.loads(spec(UPDATE + OUT))
    with pytest.raises(RecError, match="unknown backend 'fast'"):
        cell.module("fast")


def test_a_repeated_subscript_reads_the_diagonal():
    from reclang.compile import build_ir
    from reclang.ir import IndexExpr, Op
    from reclang.parser import parse

    body = UPDATE + "    out o[h, i] = S[h, i, i]\n"
    ir = build_ir(parse(spec(body), "c.rec"), {"V": 4})
    reads = [ir.node(i) for i in ir.graph if ir.node(i).op == Op.READ
             and ir.node(ir.node(i).args[0]).op == Op.UPDATE]
    assert reads[0].arg == ("h", "i", IndexExpr("+", "i", 0))
    assert reads[0].axes == ("h", "i")


def test_duplicate_hyperparameter_and_wording():
    with pytest.raises(RecError, match="hyperparameter D is declared twice"):
        reclang.loads("cell c(D = 2, D = 3):\n    input x[D]\n    out y[d] = x[d]\n")
    with pytest.raises(RecError, match="'exp' is a built-in function and cannot name an input"):
        reclang.loads("cell c(D = 2):\n    input exp[D]\n    out y[d] = exp[d]\n")
    with pytest.raises(RecError, match="h has 1 axis but 2 indices are given"):
        reclang.loads("cell c(D = 2):\n    input x[D]\n    state h[D] = 0\n"
                      "    h[d, e] <- x[d]\n    out y[d] = h[d]\n")


def test_constant_outputs_have_batch_and_time_axes():
    import torch

    m = reclang.loads("cell c():\n    input x[2]\n    out y = 3\n    out z[n: 2] = 1.5\n").module()
    y, _ = m(x=torch.randn(4, 5, 2))
    assert y["y"].shape == (4, 5) and torch.all(y["y"] == 3)
    assert y["z"].shape == (4, 5, 2) and torch.all(y["z"] == 1.5)
