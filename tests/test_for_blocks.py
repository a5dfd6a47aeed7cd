"""`for r in R:` blocks: the layout rule that delimits them, their unrolling (one SSA
value per iteration, the last update is the state's), and every misuse as a located
RecError with a reason."""

import pytest
import torch
from helpers import random_inputs, random_state

import reclang
from reclang import RecError, ast
from reclang.parser import parse
from reclang.printer import format_cell

HEAD = "cell c(N = 3, R = 2):\n    input x[N], w[R, N]\n    state S[N] = 0\n"
BLOCK = ("    for r in R:\n"
         "        a[i] = w[r, i] * S[i] + r\n"
         "        S[i] <- a[i] + x[i]\n")
OUT = "    out y[i] = S[i] + a[i]\n"


def outputs(text: str, seed_inputs):
    torch.manual_seed(0)
    m = reclang.loads(text, "c.rec").module("sequential").double()
    y, final = m(**seed_inputs, state={"S": torch.full((2, 3), 0.5, dtype=torch.float64)})
    return y, final["S"]


def test_a_block_is_the_statements_written_out_once_per_iteration():
    """r is a value and a subscript; iteration 0's a and S are intermediate values, the
    last iteration's are the let readable after the block and the state's update."""
    unrolled = HEAD + ("    a0[i] = w[0, i] * S[i] + 0\n    S0[i] = a0[i] + x[i]\n"
                       "    a[i] = w[1, i] * S0[i] + 1\n    S[i] <- a[i] + x[i]\n") + OUT
    m = reclang.loads(HEAD + BLOCK + OUT, "c.rec").module("sequential")
    x = random_inputs(m, 2, 4)
    for got, want in zip(outputs(HEAD + BLOCK + OUT, x), outputs(unrolled, x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_unrolled_values_are_ssa_and_keep_the_spec_lines():
    cell = reclang.loads(HEAD + BLOCK + OUT, "c.rec")
    lets = [(n.arg, n.loc.line) for n in (cell.ir.node(i) for i in cell.ir.stmts)]
    assert lets == [("a_0", 5), ("S_0", 6), ("a", 5), ("S", 6), ("y", 7)]
    source = cell.source("sequential")
    assert source.count("# c.rec:5: a[i] = w[r, i] * S[i] + r") == 4  # forward and step


def test_nested_blocks_a_block_last_and_no_final_newline():
    text = ("cell c(N = 2, R = 2, Q = 3):\n    input x[N]\n    state S[N] = 0\n"
            "    for r in R:\n        for q in Q:\n            S[i] <- 0.5 * S[i] + r * q"
            " + x[i]\n    out y[i] = S[i]\n")
    cell = reclang.loads(text, "c.rec")
    assert [cell.ir.node(i).arg for i in cell.ir.stmts][:3] == ["S_0_0", "S_0_1", "S_0_2"]
    last = "cell c(R = 2):\n    input x\n    state S = 0\n    out y = x\n    for r in R:\n" \
           "        S <- S + x"
    for text in (last, last + "\n", last + "\n\n# end\n"):
        assert len(parse(text).body[-1].body) == 1
    cell = reclang.loads(last, "c.rec")
    assert [cell.ir.node(i).arg for i in cell.ir.stmts] == ["y", "S_0", "S"]


def test_continuation_lines_comments_and_tabs_inside_a_block():
    spaces = HEAD + "    for r in R:\n        # a sub-step\n        a[i] = w[r, i]\n" \
        "              * S[i]\n        S[i] <- a[i]\n" + OUT
    tabs = spaces.replace("        ", "\t\t").replace("    ", "\t")
    blocks = [parse(t).body[2] for t in (spaces, tabs)]
    assert blocks[0] == blocks[1] and len(blocks[0].body) == 2
    assert isinstance(blocks[0].body[0].value, ast.Binary)  # the continuation joined


def test_printing_a_block_parses_back_to_the_same_cell():
    text = HEAD + "    for r in R:\n        for q in 2:\n            S[i] <- S[i] * q\n" \
        "        S2[i] = S[i] % 2 + S[i] // 3\n" + OUT
    cell = parse(text)
    assert parse(format_cell(cell)) == cell


LAYOUT = [
    ("body not indented", HEAD + "    for r in R:\n    S[i] <- x[i]\n" + OUT,
     "the body of a for block is indented deeper than its `for` line", 4, 5),
    ("no body", HEAD + OUT + "    for r in R:\n", "the for block has no body", 5, 5),
    ("unmatched dedent", HEAD + "    for r in R:\n        S[i] <- x[i]\n      " + OUT[4:],
     "the indentation of this line matches no enclosing block", 6, 7),
    ("tabs and spaces", HEAD + "    for r in R:\n        S[i] <- x[i]\n\t\ta[i] = x[i]\n" + OUT,
     "mixes tabs and spaces", 6, 3),
    ("missing colon", HEAD + "    for r in R\n        S[i] <- x[i]\n" + OUT,
     "a for line ends with ':'", 5, 9),
    ("incomplete last statement of a block", HEAD + "    for r in R:\n        S[i] <- x[i] +\n"
     + OUT, "the statement is incomplete", 5, 23),
    ("declaration inside", HEAD + "    for r in R:\n        input z\n        S[i] <- x[i]\n"
     + OUT, "declarations belong at the top of the cell", 5, 9),
]


@pytest.mark.parametrize("case, text, message, line, col", LAYOUT, ids=[c[0] for c in LAYOUT])
def test_layout_errors(case, text, message, line, col):
    with pytest.raises(RecError) as info:
        parse(text, "c.rec")
    assert message in info.value.message and (info.value.loc.line, info.value.loc.col) == \
        (line, col), str(info.value)


def block(*lines: str, count: str = "R") -> str:
    return HEAD + f"    for r in {count}:\n" + "".join(f"        {x}\n" for x in lines) + OUT


MISUSE = [
    ("count not an integer", block("S[i] <- x[i]", "a[i] = x[i]", count="R / 4"),
     "a for block runs a positive integer number of times; 0.5 is not one", 4, 14),
    ("count an input", block("S[i] <- x[i]", "a[i] = x[i]", count="x"),
     "counts to a hyperparameter or a constant integer; x is not one", 4, 14),
    ("out inside", block("S[i] <- x[i]", "out z[i] = x[i]", "a[i] = x[i]"),
     "an output is written once per step, so not inside a for block", 6, 13),
    ("counter on the left", block("S[r] <- x[r]", "a[i] = x[i]"),
     "r is the for block's counter, a number in each iteration", 5, 11),
    ("counter names a value", HEAD + "    for x in R:\n        S[i] <- x[i]\n" + OUT,
     "the counter x of this for block already names a value", 4, 9),
    ("twice in one iteration", block("S[i] <- x[i]", "S[i] <- S[i]", "a[i] = x[i]"),
     "S is assigned twice in one iteration of the for block", 6, 9),
    ("update also outside", HEAD + "    S[i] <- x[i]\n" + BLOCK + OUT,
     "state S is updated twice (first at line 4)", 7, 9),
    ("too many statements", block("S[i] <- x[i]", "a[i] = x[i]", count="2000"),
     "the for blocks unroll into more than 1000 statements", 5, 9),
    ("subscript expression on the left", HEAD + BLOCK + "    out y[i + 1] = S[i]\n",
     "the left side of a statement names its indices", 7, 11),
    ("constant subscript on the left", HEAD + BLOCK + "    out y[0] = S[0]\n",
     "a constant or an expression such as `i + 1` can only subscript a value", 7, 11),
    ("t in a hyperparameter's default", HEAD.replace("R = 2", "R = t + 1") + BLOCK + OUT,
     "a default must be known when the cell is loaded, so it cannot use t", 1, 19),
]


@pytest.mark.parametrize("case, text, message, line, col", MISUSE, ids=[c[0] for c in MISUSE])
def test_misuse_errors(case, text, message, line, col):
    with pytest.raises(RecError) as info:
        reclang.loads(text, "c.rec")
    assert message in info.value.message and (info.value.loc.line, info.value.loc.col) == \
        (line, col), str(info.value)


def test_a_count_may_be_an_integer_valued_float():
    cell = reclang.loads(block("S[i] <- x[i] * r", "a[i] = x[i]", count="R * 1.5"), "c.rec")
    assert [cell.ir.node(i).arg for i in cell.ir.stmts] == \
        ["S_0", "a_0", "S_1", "a_1", "S", "a", "y"]


@pytest.mark.parametrize("name", ["for", "in"])
def test_for_and_in_are_keywords(name):
    with pytest.raises(RecError, match=f"'{name}' is a keyword"):
        reclang.loads(f"cell c():\n    input {name}\n    out y = 1\n", "c.rec")


def test_a_state_updated_in_a_block_runs_on_the_parallel_backends():
    """The unrolled sub-steps are one affine map: scan runs it, and agrees."""
    cell = reclang.loads(HEAD + BLOCK + OUT, "c.rec")
    torch.manual_seed(0)
    seq, scan = (cell.module(b).double() for b in ("sequential", "scan"))
    scan.load_state_dict(seq.state_dict())
    x, s = random_inputs(seq, 2, 5), random_state(seq, 2)
    for a, b in zip(seq(**x, state=s), scan(**x, state=s)):
        torch.testing.assert_close(a, b)


def test_a_reduction_index_named_as_the_counter_is_the_reductions_own():
    cell = reclang.loads(HEAD + "    for r in R:\n        S[i] <- 0.5 * S[i] + sum(r: x[r]) + r\n"
                         "        a[i] = S[i]\n" + OUT, "c.rec")
    m = cell.module("sequential").double()
    x = random_inputs(m, 1, 1)
    y, final = m(**x)
    total = x["x"].sum()
    want = 0.5 * (0.5 * 0 + total + 0) + total + 1
    torch.testing.assert_close(final["S"], want.expand(1, 3))


def test_one_load_lists_the_blocks_problems_with_the_others_in_line_order():
    """A block's problem does not hide the others: the statements it drops are left
    out silently (a state updated only there is not also 'never updated')."""
    text = (HEAD + "    b[i] = x[i] + nowhere1[i]\n" + BLOCK + "        out z[i] = S[i]\n"
            "    for q in 0:\n        S[i] <- S[i]\n" + "    c[i] = x[i] * nowhere2[i]\n" + OUT)
    with pytest.raises(RecError) as info:
        reclang.loads(text, "c.rec")
    found = [(d.loc.line, d.message.split(":")[0]) for d in info.value.diagnostics]
    assert found == [(4, "unknown name 'nowhere1'"),
                     (8, "an output is written once per step, so not inside a for block"),
                     (9, "a for block runs a positive integer number of times; 0 is not one"),
                     (11, "unknown name 'nowhere2'")], str(info.value)


def test_the_fused_kernel_refuses_a_sum_over_an_earlier_sub_step_by_name():
    """A sub-step's weighted sum over the units of the previous sub-step needs that
    value at every unit within the step: the refusal says so, naming the sub-step."""
    text = ("cell c(N = 4, R = 2):\n    input x[N]\n    param W[N, N] ~ normal(0, 0.3)\n"
            "    state h[N] = 0\n    for r in R:\n"
            "        h[i] <- tanh(sum(m: W[i, m] * h[m]) + x[i])\n    out y[i] = h[i]\n")
    cell = reclang.loads(text, "c.rec")
    reason = next(v.reason for v in cell.verdicts if v.backend == "triton")
    assert reason == (
        "c.rec:6:9: a sum over the units of h_0, the value of h after iteration 0 of its "
        "for block (line 6), which this step computes from the states: the fused kernel "
        "mixes units only through weighted sums of the previous step's states")
    torch.manual_seed(0)
    m = cell.module("sequential")
    assert m(x=torch.randn(2, 3, 4))[0].shape == (2, 3, 4)
