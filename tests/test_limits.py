"""The limits of the language and the odd inputs at its edges: each gives a RecError
that points at the right place, never another exception, a hang or a memory blow-up."""

import re
import time

import pytest

import reclang
from reclang import RecError, config

ONE = "cell c(D = 4{hyper}):\n    input x[D]\n    out y[d] = {value}\n"


def error(text: str, **hypers) -> RecError:
    with pytest.raises(RecError) as info:
        reclang.loads(text, "t.rec", **hypers)
    return info.value


@pytest.mark.parametrize("default, message", [
    ("log(0)", "log of constants fails: math domain error"),
    ("exp(1000)", "exp of constants fails: math range error"),
    ("1 / 0", "div of constants fails: division by zero"),
    ("0 ** -1", "pow of constants fails"),
    ("sqrt(-1)", "sqrt of constants fails"),
    ("2 ** 1023 * 4", "mul of constants is not finite in float64"),
    ("9 ** 9 ** 9", "9 ** 387420489 is too large"),
    ("2 ** 2 ** 40", "2 ** 1099511627776 is too large"),
    ("2 ** 20000", "2 ** 20000 is too large"),
    ("exp(1, 2)", "exp() takes 1 argument, got 2"),
])
def test_math_errors_in_hyperparameter_defaults(default, message):
    start = time.perf_counter()
    err = error(ONE.format(hyper=f", a = {default}", value="x[d] * a"))
    assert message in err.message and (err.loc.line, err.loc.col) == (1, 19), str(err)
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize("value, message", [
    ("1" * 5000, "the number 11111111111111111111... is too large"),
    ("1e400", "the number 1e400 is too large"),
    ("1e400j", "the number 1e400 is too large"),
    ("x[d] * 2 ** 20000", "2 ** 20000 is too large"),
])
def test_huge_literals(value, message):
    err = error(ONE.format(hyper="", value=value))
    assert message in err.message and err.loc.line == 3, str(err)


def test_tiny_literals_and_long_zeros_are_numbers():
    assert reclang.loads(ONE.format(hyper="", value="x[d] * 1e-400")).ir is not None
    assert reclang.loads(ONE.format(hyper="", value="x[d] * " + "0" * 5000 + "7")).ir is not None


@pytest.mark.parametrize("size", ["9 ** 9 ** 9", "2 ** 2 ** 40", "2 ** 40", "1e30"])
def test_huge_sizes(size):
    start = time.perf_counter()
    err = error(f"cell c(D = {size}):\n    input x[D]\n    out y[d] = x[d]\n")
    assert err.loc.line in (1, 2) and time.perf_counter() - start < 1, str(err)


def test_index_space_of_a_statement():
    err = error("cell c(D = 65536):\n    input x[D], z[D]\n    out y[d] = sum(e: x[d] * z[e])\n")
    assert "65536 x 65536 = 4,294,967,296 elements" in err.message and err.loc.line == 3


def test_indices_of_a_statement():
    names = [f"i{k}" for k in range(53)]
    text = ("cell c():\n    input " + ", ".join(f"x{n}[2]" for n in names) + "\n"
            f"    out y[{', '.join(names)}] = " + " * ".join(f"x{n}[{n}]" for n in names) + "\n")
    err = error(text)
    assert f"a statement has at most {config.INDICES}" in err.message and err.loc.line == 3


def test_long_names():
    err = error(ONE.format(hyper="", value="a" * 300))
    assert "is 300 characters long" in err.message and (err.loc.line, err.loc.col) == (3, 16)
    err = error(f"cell {'c' * 300}():\n    input x[2]\n    out y[d] = x[d]\n")
    assert (err.loc.line, err.loc.col) == (1, 6)


@pytest.mark.parametrize("value", [
    "tanh(" * 150 + "x[d]" + ")" * 150,
    " + ".join(["x[d]"] * 3000),
    "- " * 5000 + "x[d]",
    "x[d] ** " * 2000 + "x[d]",
])
def test_deep_expressions(value):
    err = error(ONE.format(hyper="", value=value))
    assert f"nested more than {config.DEPTH} levels" in err.message and err.loc.line == 3


def test_expressions_within_the_depth_limit_compile_and_run():
    import torch

    value = "tanh(" * 90 + "x[d] + h[d]" + ")" * 90
    cell = reclang.loads("cell c(D = 4):\n    input x[D]\n    state h[D] = 0\n"
                         f"    h[d] <- {value}\n    out y[d] = h[d]\n")
    y, _ = cell.module()(x=torch.randn(1, 3, 4))
    assert y.shape == (1, 3, 4)


def test_a_byte_order_mark_is_accepted(tmp_path):
    text = ONE.format(hyper="", value="x[d]")
    path = tmp_path / "bom.rec"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert reclang.load(path).name == "c"
    assert reclang.loads("\ufeff" + text).name == "c"


def test_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin.rec"
    path.write_bytes(b"cell c(D = 4):\n    input x[D]  # caf\xe9\n    out y[d] = x[d]\n")
    with pytest.raises(RecError) as info:
        reclang.load(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}:2:22: error: the file is not UTF-8 text: byte 0xe9 cannot be decoded"
    assert lines[2] == "    " + " " * 21 + "^"


@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\x85", "\u2028", "\u2029"])
def test_line_separators_that_are_not_newlines(char):
    """Only '\\n' ends a line for the lexer; the quoted line must be the one it counted."""
    text = f"cell c(D = 4):\n    # a comment{char}with a separator\n    input x[D]\n    out y = zz\n"
    err = error(text)
    assert err.loc.line == 4 and str(err).splitlines()[1] == "        out y = zz", str(err)


def test_the_caret_keeps_tabs():
    err = error("cell c(D = 4):\n\tinput x[D]\n\tout y = zz\n")
    lines = str(err).splitlines()
    assert re.match(r"t.rec:3:10: ", lines[0]) and lines[2] == "    \t" + " " * 8 + "^"


def test_non_finite_hyperparameter_overrides():
    for value in (float("inf"), float("nan"), 10 ** 400):
        err = error(ONE.format(hyper=", a = 1.0", value="x[d] * a"), a=value)
        assert "must be finite" in err.message


@pytest.mark.parametrize("init, message, col", [
    ("uniform(1 / 0 ** -0.5, 1)", "pow of constants fails", 30),
    ("arange(2 ** 40)", "arange(n) takes an integer n from 1 to 4", 18),
    ("arange(2.5)", "arange(n) takes an integer n from 1 to 4", 18),
])
def test_constants_in_initializers(init, message, col):
    cell = reclang.loads(f"cell c(N = 4):\n    input x[N]\n    param W[N] ~ {init}\n"
                         "    out y[n] = W[n] * x[n]\n", "t.rec")
    with pytest.raises(RecError) as info:
        cell.module()
    assert message in info.value.message and (info.value.loc.line, info.value.loc.col) == (3, col)
    assert str(info.value).startswith("t.rec:3:")


def chain(n: int, step: str) -> str:
    lets = "".join(f"    a{k}[d] = {step.format(p=k - 1)}\n" for k in range(1, n))
    return ("cell c(D = 4):\n    input x[D]\n    state h[D] = 0\n    a0[d] = x[d] + h[d]\n"
            f"{lets}    h[d] <- a{n - 1}[d]\n    out y[d] = h[d]\n")


def test_long_chains_of_lets_are_refused():
    """The analysis follows a value through every let (200 chained lets were a
    RecursionError in the planner)."""
    err = error(chain(200, "a{p}[d] * 0.5 + x[d]"))
    assert f"at most {config.CHAIN}" in err.message and "counting the lets it reads" in err.message


def test_chained_tanh_generates_in_linear_time():
    """40 chained tanh took minutes in the fused kernel's cse (sympy re-derived the
    assumptions of every nested tanh); the limit's worth of them takes seconds."""
    cell = reclang.loads(chain(95, "tanh(a{p}[d])"))
    start = time.perf_counter()
    assert "def " in cell.source("triton")
    assert time.perf_counter() - start < 30


def big(n: int) -> str:
    """n lets of the inputs, n // 10 states updated from them, one output."""
    states = max(1, n // 10)
    lines = ["cell big(D = 8):", "    input x[D], g[D]",
             "    state " + ", ".join(f"s{k}[D] = 0" for k in range(states))]
    lines += [f"    a{k}[d] = tanh(x[d] * {k + 1}) + sigmoid(g[d]) * {k % 7}" for k in range(n)]
    lines += [f"    s{k}[d] <- exp(-softplus(g[d])) * s{k}[d] + a{(k * 10) % n}[d]"
              for k in range(states)]
    lines.append("    out y[d] = " + " + ".join(f"s{k}[d]" for k in range(min(states, 50))))
    return "\n".join(lines) + "\n"


def _compile_time(n: int) -> float:
    times = []
    for _ in range(2):
        start = time.perf_counter()
        cell = reclang.loads(big(n), "big.rec")
        assert cell.plan.form == "diag"
        cell.source("sequential")
        times.append(time.perf_counter() - start)
    return min(times)


def test_compile_time_grows_about_linearly():
    """docs/guarantees.md: checking, analyzing and generating take time about linear in
    the number of statements (the plan walked the whole graph once per state)."""
    _compile_time(10)  # imports
    small, large = _compile_time(100), _compile_time(800)
    assert large < 16 * small, (small, large)  # 8x the statements: linear 8x, quadratic 64x
