"""The one function table (reclang/functions.py): every row agrees with itself (fold,
torch, sympy and kernel forms; the derivative against autograd; the Triton spelling
exists), the docs list every built-in, and a new row (erf, gelu, elu) runs on every
backend that its cell's plan allows, with gradients."""

import math
import re
from pathlib import Path

import pytest
import sympy
import torch
from helpers import as_reference, assert_matches_reference, random_inputs, random_state

import reclang
from reclang import functions as F
from reclang.codegen.fused_loop import TritonPrinter

ROOT = Path(__file__).resolve().parent.parent
POINTS = (-1.7, -0.3, 0.4, 2.2)  # away from the kinks of relu, max, sign, elu
ROWS = [f for f in F.FUNCTIONS.values() if f.conditions == 0 and f.result != "bool"]
REAL = [f for f in ROWS if f.in_kernels]
COMPLEX = [f for f in ROWS if not f.in_kernels and f.name != "complex"]


def args_at(fn, k: int) -> list[float]:
    """A few real points for fn's arguments (positive where logs and roots need it)."""
    positive = fn.name in ("log", "log1p", "sqrt", "rsqrt", "pow")
    x = [POINTS[(k + j) % len(POINTS)] for j in range(fn.arity)]
    x = [abs(v) + 0.1 for v in x] if positive else x
    if fn.name == "clamp":
        x = [x[0], -1.0, 1.0]
    return x


def torch_value(fn, args: list[torch.Tensor]) -> torch.Tensor:
    names = [f"a{j}" for j in range(fn.arity)]
    return eval(fn.torch.format(*names), {"torch": torch}, dict(zip(names, args)))


@pytest.mark.parametrize("fn", REAL, ids=lambda f: f.name)
def test_fold_torch_and_sympy_agree(fn):
    for k in range(len(POINTS)):
        x = args_at(fn, k)
        want = torch_value(fn, [torch.tensor(v, dtype=torch.float64) for v in x])
        assert fn.fold(*x) == pytest.approx(float(torch.real(want)), rel=1e-12, abs=1e-12)
        assert complex(fn.sympy(*map(sympy.Float, x)).evalf()).real == \
            pytest.approx(float(torch.real(want)), rel=1e-12, abs=1e-12)
        if fn.name in F.KERNEL:
            assert float(sympy.N(F.KERNEL[fn.name](*map(sympy.Float, x)))) == \
                pytest.approx(float(want), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("fn", COMPLEX, ids=lambda f: f.name)
def test_fold_torch_and_sympy_agree_on_complex_values(fn):
    for v in (0.3 - 1.2j, -2.0 + 0.5j):
        want = complex(torch_value(fn, [torch.tensor(v, dtype=torch.complex128)]))
        assert complex(fn.fold(v)) == pytest.approx(want, rel=1e-12)
        assert complex(fn.sympy(sympy.sympify(v)).evalf()) == pytest.approx(want, rel=1e-12)


KERNEL_ROWS = [f for f in F.FUNCTIONS.values()
               if f.name in F.KERNEL and f.derivative and f.result != "bool"]


@pytest.mark.parametrize("fn", [f for f in F.FUNCTIONS.values() if f.result == "bool"],
                         ids=lambda f: f.name)
def test_a_comparison_has_zero_derivatives(fn):
    assert fn.derivative(*F.real_arguments(fn)) == (0, 0)


@pytest.mark.parametrize("fn", KERNEL_ROWS, ids=lambda f: f.name)
def test_derivative_agrees_with_autograd(fn):
    """The row's partial derivatives equal torch's (a condition's is 0), and sympy's
    derivative of the kernel form, which the kernels print, equals the row's."""
    args = F.real_arguments(fn)
    for k in range(len(POINTS)):
        x = args_at(fn, k)
        env = {a: v for a, v in zip(sympy.symbols(f"x0:{fn.arity}", real=True), x)}
        xs = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in x]
        inputs = [xs[0] > 0 if j < fn.conditions else xs[j] for j in range(fn.arity)]
        grads = torch.autograd.grad(torch_value(fn, inputs), xs, allow_unused=True)
        for j, (partial, g) in enumerate(zip(fn.derivative(*args), grads)):
            ours = float(sympy.sympify(partial).subs(env))
            assert ours == pytest.approx(0.0 if g is None else float(g), rel=1e-9, abs=1e-12)
            if j >= fn.conditions:
                theirs = sympy.diff(F.KERNEL[fn.name](*args), args[j]).subs(env)
                assert float(theirs) == pytest.approx(ours, rel=1e-9, abs=1e-12)


def test_every_triton_spelling_exists():
    """What a spelling calls is in triton.language or in the gate functions of
    backends/templates/gates.py.jinja."""
    tl = pytest.importorskip("triton.language")
    gates = (ROOT / "backends" / "templates" / "gates.py.jinja").read_text()
    for fn in F.FUNCTIONS.values():
        if fn.triton is None:
            continue
        called = re.match(r"([\w.]+)\(", fn.triton).group(1)
        if called.startswith("tl."):
            assert hasattr(tl, called[3:]), fn.name
        else:
            assert f"def {called}(" in gates, fn.name


@pytest.mark.parametrize("name", sorted(F.KERNEL))
def test_a_kernel_form_and_its_derivative_print_in_triton(name):
    """has_triton says yes only for what the Triton printer prints (with the derivative
    the backward kernel needs)."""
    fn = F.FUNCTIONS[name]
    args = F.real_arguments(fn)
    parts = [F.KERNEL[name](*args), *fn.derivative(*args)]
    printer = TritonPrinter("x0")
    if F.has_triton(name):
        assert all(printer.doprint(sympy.sympify(p)) for p in parts)
    else:
        with pytest.raises(NotImplementedError):
            [printer.doprint(sympy.sympify(p)) for p in parts]


def test_no_derivative_is_a_refusal_of_the_fused_kernel_at_its_place(monkeypatch):
    """A row without a derivative: kernels that differentiate refuse it, at its line."""
    monkeypatch.setitem(F.FUNCTIONS, "erf", F.Fn("erf", 1, "torch.erf({0})", math.erf,
                                                 real_only=True, sympy=sympy.erf))
    cell = reclang.loads(LOOP, "c.rec")
    verdict = cell.verdict("triton")
    assert not verdict.supported
    assert verdict.reason.startswith("c.rec:5:5: erf has no derivative in the function table")


def test_the_docs_list_every_builtin():
    """docs/language.md's function list names exactly the callable built-ins."""
    text = (ROOT / "docs" / "language.md").read_text()
    table = text.split("| function | computes (PyTorch) |")[1].split("\n\n")[0]
    rows = [line.split("|")[1] for line in table.splitlines()[2:]
            if "reductions" not in line and "initializers" not in line]
    listed = {w for cell in rows for w in re.findall(r"[a-z][a-z0-9]*", cell)} - {
        "a", "b", "x", "lo", "hi", "cond", "re", "im"}
    assert listed == F.CALLABLE


def test_a_constant_that_sympy_keeps_exact_is_printed_as_a_number():
    """gelu's sqrt(2) in an operand of the chunk backend was torch.sqrt(2): a TypeError."""
    from reclang.codegen.sympy_to_torch import SympyLowering

    lowering = SympyLowering(reclang.loads(DIAG, "c.rec").ir, {})
    x = sympy.IndexedBase("x", real=True)[sympy.Symbol("n", integer=True)]
    code = lowering.lower(sympy.sqrt(2) * x + sympy.pi)
    assert code.text == "3.141592653589793 + 1.4142135623730951 * x"


LOOP = """cell c(N = 4):
    input x[N]
    param W[N, N] ~ normal(0, 0.5)
    state h[N] = 0
    h[n] <- erf(sum(m: W[n, m] * h[m]) + x[n]) + 0.1 * gelu(h[n]) + elu(x[n] - h[n])
    out y[n] = gelu(h[n]) + erf(x[n])
"""
DIAG = """cell d(N = 4):
    input x[N]
    state h[N] = 0
    h[n] <- (0.5 + 0.4 * erf(x[n])) * h[n] + gelu(x[n]) + elu(x[n])
    out y[n] = erf(h[n]) + elu(-h[n])
"""


MAT = """cell g(K = 3, V = 2):
    input q[K], k[K], v[V], x[K]
    state S[K, V] = 0
    S[i, j] <- exp(-softplus(x[i]) * (1 + erf(x[i]))) * S[i, j] + gelu(k[i]) * elu(v[j])
    out o[j] = sum(i: q[i] * S[i, j])
"""


@pytest.mark.parametrize("spec, backends", [(LOOP, ["triton", "newton", "cpu"]),
                                            (DIAG, ["scan", "triton", "cpu"]),
                                            (MAT, ["chunk", "triton"])])
def test_erf_gelu_elu_run_on_every_backend_the_plan_allows(spec, backends):
    """New rows need nothing else: sequential, scan, chunk and the triton kernels (the
    fused loop, the gated scan and the matrix kernels, under the interpreter on the
    CPU) run them, with gradients, against the sequential backend in float64."""
    cell = reclang.loads(spec, "c.rec")
    assert [v.backend for v in cell.verdicts if v.supported] == ["sequential", *backends]
    torch.manual_seed(0)
    sequential = cell.module("sequential").double()
    for backend in backends:
        if backend == "triton":
            pytest.importorskip("triton")
        torch.manual_seed(0)
        m = cell.module(backend).double()
        assert_matches_reference(m, as_reference(sequential), random_inputs(m, 2, 5),
                                 random_state(m, 2))
