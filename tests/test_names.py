"""Spec names in generated code: the map from spec names to Python names is injective
and never reaches a name the generated code uses for itself, on every backend.

The names the tests draw come from the generators themselves: every identifier of the
catalogue's generated sources (every backend, the Triton kernels included), the pieces
of those identifiers, Python's keywords and builtins, and twins with `_` suffixes. They
are put into small cells of four forms (diagonal, matrix decay, nonlinear, stateless),
and every backend the plan allows must give the sequential result, which must be the
result computed here directly."""

from __future__ import annotations

import ast
import builtins
import functools
import keyword
import re

import pytest
import torch
from helpers import BACKENDS, SPECS, catalogue_sources
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from reclang.codegen.names import RESERVED, py_name
from reclang.codegen.render import TEMPLATES

import reclang

F = torch.nn.functional
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
CPU_BACKENDS = BACKENDS[:-1]


def identifiers(source: str) -> set[str]:
    """Every name bound or read in a Python source (attributes excluded)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.alias):
            found.add((node.asname or node.name).split(".")[0])
    return found


@functools.cache
def generated_names() -> list[str]:
    """Candidate spec names: the generated code's own names and their pieces, Python's
    names, and `_` twins of a few of them."""
    names = set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins)) | RESERVED
    for source in catalogue_sources().values():
        for name in identifiers(source):
            names |= {name.lstrip("_")} | set(name.split("_"))
    names = sorted(n for n in names if NAME.fullmatch(n))
    return names + [n + "_" for n in names[::7]] + [n + "__" for n in names[::29]]


def spec_names(ir) -> set[str]:
    return {py_name(n) for n in ir.decls} | {py_name(ir.node(i).arg) for i in ir.stmts}


def function_names(source: str) -> set[str]:
    """The names inside the module-level functions forward and step (where spec names
    live), nested functions and lambdas included."""
    found = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name in ("forward", "step"):
            found |= identifiers(ast.unparse(node)) - {node.name}
    return found


# ---- the map itself
@given(st.lists(st.sampled_from(["t", "t_", "t__", "B", "B_", "torch", "lambda", "None",
                                 "print", "def", "x", "x_", "operand", "self"]) |
                st.from_regex(NAME, fullmatch=True), min_size=2, max_size=6, unique=True))
def test_py_name_is_injective_and_never_reserved(names):
    images = [py_name(n) for n in names]
    assert len(set(images)) == len(images)
    assert not set(images) & RESERVED
    assert all(not i.startswith("_") for i in images)


def test_no_reserved_name_is_an_image():
    """A reserved name that ends in `_` and starts with a letter could be an image."""
    assert not [n for n in RESERVED if n.endswith("_") and not n.startswith("_")]


@pytest.mark.parametrize("key", sorted(catalogue_sources()), ids="-".join)
def test_forward_and_step_use_only_spec_reserved_or_underscore_names(key):
    """Keeps RESERVED (the names spec names must avoid) true to what generators print."""
    source = catalogue_sources()[key]
    cell = reclang.load(SPECS / f"{key[0]}.rec")
    # the derived leaves of lag, t and subscript expressions (reclang/hoist.py) are named
    # apart from every spec name there, and are the backends' inputs
    spec = spec_names(cell.ir) | spec_names(cell.hoisted)
    other = {n for n in function_names(source) - spec if not n.startswith("_")}
    assert other <= RESERVED, sorted(other - RESERVED)


def test_fused_kernel_names_of_the_spec_have_prefixes_no_template_name_has():
    """In the fused kernel and the gated scan, spec names appear as s_X, new_X, y_X, g_X,
    dy_X, d_s_X (KernelCode) and operands as o_X, c_X, d_o_X, d_c_X (operand_symbols): the
    templates' own code (comments and docstrings aside) has no name that starts so."""
    text = "".join((TEMPLATES / name).read_text()
                   for name in ("fused_loop.py.jinja", "gated_scan.py.jinja", "gates.py.jinja"))
    code = re.sub(r'"""[\s\S]*?"""|#[^\n]*|{{[^}]*}}|{%[^%]*%}', " ", text)
    own = set(re.findall(r"(?<![.\w])[A-Za-z_]\w*", code))
    assert "out_ptr" in own  # what an output named ptr met as out_ptr before
    assert not [n for n in own if n.startswith(("s_", "new_", "y_", "g_", "dy_", "o_", "c_",
                                                "d_o_", "d_c_"))]


# ---- small cells with those names, on every backend
FORMS = {
    "diag": """
cell {cell}({H} = 3):
    input {x}[{H}], {x2}[{H}]
    param {p}[{H}] ~ uniform(-1, 1)
    state {h}[{H}] = 0
    {l}[{i}] = sigmoid({x}[{i}] + {p}[{i}])
    {l2}[{i}] = 2 * {x2}[{i}]
    {h}[{i}] <- {l}[{i}] * {h}[{i}] + {l2}[{i}]
    out {y}[{i}] = {h}[{i}] * {l}[{i}] + {l2}[{i}]
""",
    "mat-decay": """
cell {cell}({H} = 3):
    input {x}[{H}], {x2}[{H}]
    param {p}[{H}] ~ uniform(-1, 1)
    state {h}[{H}, {H}] = 0
    {l}[{i}] = logsigmoid({x}[{i}] + {p}[{i}])
    {l2}[{i}] = 2 * {x2}[{i}]
    {h}[{i}, {j}] <- exp({l}[{i}]) * {h}[{i}, {j}] + {x2}[{i}] * {l2}[{j}]
    out {y}[{j}] = sum({i}: {x}[{i}] * {h}[{i}, {j}])
""",
    "nonlinear": """
cell {cell}({H} = 3):
    input {x}[{H}], {x2}[{H}]
    param {p}[{H}, {H}] ~ uniform(-1, 1)
    state {h}[{H}] = 0
    {l}[{i}] = {x}[{i}] + {x2}[{i}]
    {l2}[{i}] = 2 * {l}[{i}]
    {h}[{i}] <- tanh(sum({j}: {p}[{i}, {j}] * {h}[{j}]) + {l2}[{i}])
    out {y}[{i}] = {h}[{i}] + {l}[{i}]
""",
    "stateless": """
cell {cell}({H} = 3):
    input {x}[{H}], {x2}[{H}]
    param {p}[{H}] ~ uniform(-1, 1)
    {l}[{i}] = 2 * {x}[{i}]
    {l2}[{i}] = {l}[{i}] + {x}[{i}] * {p}[{i}]
    out {y}[{i}] = {l2}[{i}] + {l}[{i}] - {x2}[{i}]
""",
}
ROLES = ("cell", "H", "x", "x2", "p", "h", "l", "l2", "y", "i", "j")


def direct(form: str, x, x2, p, T: int):
    """The form's output computed here, in float64 ([B, T, 3])."""
    if form == "stateless":
        return 2 * x + x * p + 2 * x - x2
    h = torch.zeros(x.shape[0], 3, 3) if form == "mat-decay" else torch.zeros(x.shape[0], 3)
    h, ys = h.double(), []
    for t in range(T):
        if form == "diag":
            a = torch.sigmoid(x[:, t] + p)
            h = a * h + 2 * x2[:, t]
            ys.append(h * a + 2 * x2[:, t])
        elif form == "mat-decay":
            h = torch.exp(F.logsigmoid(x[:, t] + p))[:, :, None] * h + \
                x2[:, t, :, None] * 2 * x2[:, t, None, :]
            ys.append(torch.einsum("bi,bij->bj", x[:, t], h))
        else:
            le = x[:, t] + x2[:, t]
            h = torch.tanh(h @ p.T + 2 * le)
            ys.append(h + le)
    return torch.stack(ys, 1)


@st.composite
def named(draw):
    """Distinct names for the roles; l2 and x2 are often the `_` twins of l and x."""
    pool = st.sampled_from(generated_names())
    names = {}
    for role in ROLES:
        twin = {"x2": "x", "l2": "l"}.get(role)
        if twin and draw(st.booleans()):
            names[role] = names[twin] + "_"
        else:
            names[role] = draw(pool)
    if len(set(names.values())) < len(names):
        reject()
    return names


def build(form: str, names: dict):
    try:
        return reclang.loads(FORMS[form].format(**names))
    except reclang.RecError:
        reject()  # a name the language or the module keeps for itself (`state`, `cuda`)


def check(form: str, names: dict, backends, T: int, device: str = "cpu"):
    cell = build(form, names)
    torch.manual_seed(0)
    try:
        reference = cell.module("sequential").double()
    except reclang.RecError:
        reject()
    gen = torch.Generator().manual_seed(1)
    inputs = {names[r]: torch.randn(2, T, 3, generator=gen, dtype=torch.float64)
              for r in ("x", "x2")}
    y, _ = reference(**inputs)  # by the spec's own names, twins included
    p = getattr(reference, names["p"]).detach()
    expected = direct(form, inputs[names["x"]], inputs[names["x2"]], p, T)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    if form != "stateless":
        state, steps = None, []
        for t in range(T):
            y_t, state = reference.step(state=state, **{k: v[:, t] for k, v in inputs.items()})
            steps.append(y_t)
        torch.testing.assert_close(torch.stack(steps, 1), expected, rtol=1e-12, atol=1e-12)
    for backend in backends:
        if backend == "sequential" or not cell.supports(backend):
            continue
        m = cell.module(backend).double().to(device)
        m.load_state_dict(reference.state_dict())
        y_b, _ = m(**{k: v.to(device) for k, v in inputs.items()})
        torch.testing.assert_close(y_b.cpu(), y, rtol=1e-10, atol=1e-10,
                                   msg=functools.partial("{}: {}".format, backend))


SLOW = {"deadline": None, "suppress_health_check": [HealthCheck.filter_too_much,
                                                    HealthCheck.too_slow]}


@pytest.mark.parametrize("form", FORMS)
@settings(max_examples=25, **SLOW)
@given(names=named())
def test_generated_names_on_every_cpu_backend(form, names):
    check(form, names, CPU_BACKENDS, T=4)


@pytest.mark.parametrize("form", ["diag", "mat-decay", "nonlinear"])
@settings(max_examples=3, **SLOW)
@given(names=named())
def test_generated_names_on_triton(form, names):
    """Under Triton's interpreter on the CPU (tests/conftest.py): a few examples."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check(form, names, ["triton"], T=3, device=device)


def test_twins_are_different_variables():
    """The issue's case: t_ = 2 t read next to t gives 3 t, not 4 t."""
    cell = reclang.loads("cell c(N = 3):\n    input t[N]\n    t_[n] = 2 * t[n]\n"
                         "    out y[n] = t_[n] + t[n]\n")
    t = torch.ones(1, 2, 3, dtype=torch.float64)
    for backend in CPU_BACKENDS:
        if cell.supports(backend):
            y, _ = cell.module(backend).double()(t=t)
            assert torch.equal(y, 3 * t), backend


def test_two_inputs_that_are_twins():
    cell = reclang.loads("cell c(N = 3):\n    input t[N], t_[N]\n"
                         "    out y[n] = t_[n] - t[n]\n")
    t = torch.ones(1, 2, 3, dtype=torch.float64)
    y, _ = cell.module("sequential").double()(t=t, t_=3 * t)
    assert torch.equal(y, 2 * t)


def test_an_output_named_like_a_kernel_argument():
    """The fused kernel printed an output y as out_y: an output named ptr was the
    kernel's argument out_ptr."""
    pytest.importorskip("triton")
    names = dict(zip(ROLES, ("c", "N", "x", "u", "W", "h", "a", "b", "ptr", "i", "j")))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check("nonlinear", names, ["triton"], T=2, device=device)


@pytest.mark.parametrize("form", ["diag", "mat-decay", "nonlinear"])
def test_the_names_the_issue_lists(form):
    """Spec names equal to what the generated code calls broke the backend using them."""
    names = dict(zip(ROLES, ("T", "B", "linear_scan", "fft_scan", "operand", "final_states",
                             "chunk_affine", "self", "cu_seqlens", "t", "lambda")))
    check(form, names, CPU_BACKENDS, T=3)


def test_params_keep_the_spec_names_for_users():
    """Parameters are registered under the spec's names; the generated code's keyword
    arguments are the mapped ones (a_ → a__), given by the module."""
    cell = reclang.loads("cell c(N = 3):\n    input x[N]\n    param a[N], a_[N], print[N] = 1\n"
                         "    out y[n] = a[n] * x[n] + a_[n] - print[n]\n")
    x = torch.full((1, 2, 3), 2.0, dtype=torch.float64)
    for backend in CPU_BACKENDS:
        if cell.supports(backend):
            m = cell.module(backend).double()
            assert {name for name, _ in m.named_parameters()} == {"a", "a_", "print"}
            with torch.no_grad():
                m.a.fill_(3.0)
                m.a_.fill_(5.0)
            y, _ = m(x=x)
            assert torch.equal(y, torch.full_like(x, 10.0)), backend
