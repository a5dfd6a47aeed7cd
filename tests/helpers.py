"""Shared checks for the spec tests: a module against an independent reference, and
the step form against the full-sequence form, in float64, values and gradients.

A *reference* is a plain function written in the test from the paper's equations:

    def reference(inputs, params, state):   # inputs [B, T, ...]; params: the module's
        ...                                 # own tensors; state: initial states [B, ...]
        return outputs, final_state         # dicts name -> tensor

It gets the module's parameter tensors themselves, so gradients with respect to the
parameters can be compared too.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch

import reclang

F = torch.nn.functional
SPECS = Path(__file__).resolve().parent.parent / "specs"
LENGTHS = (1, 2, 7, 13)  # T = 1, and a few awkward (prime) lengths
unit = lambda x: F.normalize(x, dim=-1)  # noqa: E731
# Inputs of the matrix-state cells as the papers constrain them: log decays <= 0, unit
# keys, β in [0, 1] (in [0, 2] for DeltaProduct), RWKV-7's removal and replacement keys.
MATRIX_TRANSFORMS = {
    "gla": {"g": lambda g: F.logsigmoid(g) / 4}, "hgrn2": {"g": F.logsigmoid},
    "simple_gla": {"g": F.logsigmoid}, "rwkv6": {"w": lambda w: -torch.exp(w / 2)},
    "mlstm": {"i": lambda i: -F.softplus(i)},
    "delta_net": {"k": unit, "beta": torch.sigmoid},
    "gated_delta_net": {"k": unit, "beta": torch.sigmoid, "g": F.logsigmoid},
    "delta_product": {"k": unit, "beta": lambda b: 2 * torch.sigmoid(b)},
    "rwkv7": {"w": lambda d: -math.exp(-0.5) * torch.sigmoid(d), "k": unit,
              "a": lambda a: -unit(a), "b": lambda b: unit(b) / 2},
}


def load(name: str, **hypers):
    """A float64 module of the spec `specs/<name>.rec`, with a fixed seed."""
    torch.manual_seed(0)
    return reclang.load(SPECS / f"{name}.rec", **hypers).module("sequential").double()


def random_inputs(module, B: int, T: int | None, seed: int = 1, **transforms) -> dict:
    """Standard-normal inputs [B, T, *dims] (or [B, *dims] when T is None), float64.
    `transforms` maps an input name to a function applied to its raw sample, e.g.
    g=lambda x: -torch.nn.functional.softplus(x) for a log gate."""
    gen = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    inputs = {}
    for d in module.ir.inputs:
        x = torch.randn(*lead, *d.shape, generator=gen, dtype=torch.float64)
        inputs[d.name] = transforms.get(d.name, lambda v: v)(x)
    return inputs


def random_state(module, B: int, seed: int = 2, scale: float = 0.5, **transforms) -> dict:
    """Random initial states [B, *dims] (complex states get a random imaginary part)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for d in module.ir.states:
        s = scale * torch.randn(B, *d.shape, generator=gen, dtype=torch.float64)
        if d.dtype == "complex":
            s = torch.complex(s, scale * torch.randn(B, *d.shape, generator=gen,
                                                     dtype=torch.float64))
        state[d.name] = transforms.get(d.name, lambda v: v)(s)
    return state


def _as_dict(module, y) -> dict:
    return y if isinstance(y, dict) else {module.ir.outputs[0].arg: y}


def _leaves(inputs: dict, state: dict | None):
    """Fresh leaf copies that require gradients."""
    xs = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    s0 = None if state is None else {k: v.detach().clone().requires_grad_(True)
                                     for k, v in state.items()}
    return xs, s0


def _loss(outs: dict, final: dict, seed: int = 3):
    """A random linear functional of every output and final state, so that every
    gradient path is exercised."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _, v in sorted(outs.items()) + sorted(final.items()):
        w = torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.device)
        total = total + (torch.view_as_real(v) if v.is_complex() else v).mul(
            torch.view_as_real(w.to(v.dtype)) if v.is_complex() else w).sum()
    return total


def _grads(loss, named: dict) -> dict:
    names = [k for k, v in named.items() if v.requires_grad]
    grads = torch.autograd.grad(loss, [named[k] for k in names], allow_unused=True)
    return {k: (torch.zeros_like(named[k]) if g is None else g) for k, g in zip(names, grads)}


def _compare(what: str, got: dict, want: dict, atol: float, rtol: float):
    assert set(got) == set(want), f"{what}: names {sorted(got)} != {sorted(want)}"
    for k in want:
        assert got[k].shape == want[k].shape, \
            f"{what} {k}: shape {list(got[k].shape)} != {list(want[k].shape)}"
        torch.testing.assert_close(got[k], want[k].to(got[k].dtype), atol=atol, rtol=rtol,
                                   msg=lambda m, k=k: f"{what} {k}: {m}")


def assert_matches_reference(module, reference, inputs: dict, state: dict | None = None,
                             atol: float = 1e-9, rtol: float = 1e-7, grads: bool = True,
                             varlen: dict | None = None):
    """The module equals the reference: outputs, final states, and the gradients of a
    random functional of both with respect to inputs, params and initial states.
    `varlen` (lengths= or cu_seqlens=) goes to the module; the reference gets it too
    when it is made by as_reference."""
    params = dict(module.named_parameters())
    xs, s0 = _leaves(inputs, state)
    y, final = module(state=s0, **xs, **(varlen or {}))
    outs = _as_dict(module, y)
    ref_xs, ref_s0 = _leaves(inputs, state)
    first = next(iter(inputs.values()))
    ref_state = ref_s0 if ref_s0 is not None else {
        k: v.detach() for k, v in module.initial_state(first.shape[0], torch.float64,
                                                       first.device).items()}
    ref_outs, ref_final = reference({**ref_xs, **(varlen or {})}, params, ref_state)
    _compare("output", outs, ref_outs, atol, rtol)
    _compare("final state", final, ref_final, atol, rtol)
    if not grads:
        return
    ours = _grads(_loss(outs, final), {**xs, **(s0 or {}), **params})
    theirs = _grads(_loss(ref_outs, ref_final), {**ref_xs, **(ref_s0 or {}), **params})
    _compare("gradient", {k: ours[k] for k in theirs}, theirs, atol * 10, rtol * 10)


def assert_step_matches_forward(module, inputs: dict, state: dict | None = None,
                                atol: float = 1e-10, rtol: float = 1e-8):
    """Running `step` T times gives the outputs and states of one `forward` call."""
    y, final = module(state=state, **inputs)
    outs = _as_dict(module, y)
    T = next(iter(inputs.values())).shape[1]
    steps = {k: [] for k in outs}
    s = state
    for t in range(T):
        y_t, s = module.step(state=s, **{k: v[:, t] for k, v in inputs.items()})
        for k, v in _as_dict(module, y_t).items():
            steps[k].append(v)
    _compare("step output", {k: torch.stack(v, 1) for k, v in steps.items()}, outs, atol, rtol)
    _compare("step state", s, final, atol, rtol)


def outer(k, v):
    """k vᵀ per head: [B, H, K] x [B, H, V] -> [B, H, K, V]."""
    return k.unsqueeze(-1) * v.unsqueeze(-2)


SMALL = {"D": 3, "N": 4, "H": 2, "K": 4, "V": 3, "P": 3, "R": 2}


@functools.cache
def catalogue_cell(name: str):
    """A catalogue spec as written, loaded once per process: the test modules ask each
    spec what its plan allows while they are collected (a load is parse, check and
    analysis; the verdicts are memoized on the cell)."""
    return reclang.load(SPECS / f"{name}.rec")


def catalogue_names() -> list[str]:
    return [path.stem for path in sorted(SPECS.glob("*.rec"))]


def cells_on(backend: str) -> list[str]:
    """The catalogue specs whose plan a backend can run."""
    return [name for name in catalogue_names() if catalogue_cell(name).supports(backend)]


def small(name: str):
    """A catalogue cell with small sizes (those of SMALL that it has)."""
    cell = reclang.load(SPECS / f"{name}.rec")
    return reclang.load(SPECS / f"{name}.rec", **{k: v for k, v in SMALL.items()
                                                  if k in cell.hypers})


def as_reference(sequential):
    """The sequential module as a reference that uses the tested module's params."""
    from torch.func import functional_call

    name = sequential.ir.outputs[0].arg

    def reference(x, params, state):
        y, final = functional_call(sequential, params, args=(), kwargs={**x, "state": state})
        return (y if isinstance(y, dict) else {name: y}), final
    return reference


def expression(depth: int, terms, functions):
    """A hypothesis strategy for expressions of the spec language: `terms`, wrapped in
    `functions` ("tanh({})") and joined by +, -, *, nested `depth` deep."""
    from hypothesis import strategies as st

    leaf = st.sampled_from(terms)
    if depth == 0:
        return leaf
    inner = expression(depth - 1, terms, functions)
    return st.one_of(
        leaf,
        st.tuples(st.sampled_from(functions), inner).map(lambda t: t[0].format(t[1])),
        st.tuples(inner, st.sampled_from([" + ", " - ", " * "]), inner).map("".join))


def every_variant(cell, chunk: int | None = None):
    """A matrix cell's generated Triton file with every kernel variant (recurrent,
    chunked, fed back): the kernels take any ranks, readouts and low-rank parts, but a
    cell's own file holds only the variants its plan calls."""
    from reclang.codegen.triton import TritonChunkProgram
    from reclang.generated import load_source
    from reclang.schedule import TritonMatrixSchedule

    schedule = TritonMatrixSchedule(**({"chunk": chunk} if chunk else {}))
    program = TritonChunkProgram(cell.ir, cell.plan.form_of("matrix"), schedule,
                                 cell.plan.summary)
    program.every = True
    return load_source(program.source(), f"{cell.name}_every_variant")


BACKENDS = ("sequential", "scan", "chunk", "fft", "triton")


@functools.cache
def catalogue_sources() -> dict[tuple[str, str], str]:
    """The generated source of every catalogue spec on every backend its plan allows."""
    sources = {}
    for name in catalogue_names():
        cell = catalogue_cell(name)
        for backend in BACKENDS:
            if cell.supports(backend):
                sources[name, backend] = cell.source(backend)
    return sources


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Imported by a test module: its cases run on one intra-op thread. They are tiny:
    on a shared 2-core machine a second thread only contends (BLAS threads spinning: a
    4x4 bmm took 10 ms with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
