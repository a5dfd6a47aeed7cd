"""The cpu backend (backends/cpu_loop.py): the compiled loop equals the sequential
backend in float64 (outputs, final states, gradients of inputs, params and initial
states; T = 1 and primes; lengths and cu_seqlens), float32 runs the float entry points,
and the compiled libraries are cached under the trust rules of reclang/runtime/cpp.py.
Six small cells (four nonlinear, two diagonal): six compiles per session (about a second
each), and `auto`'s choice with compiling allowed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import (
    LENGTHS,
    SPECS,
    as_reference,
    assert_matches_reference,
    random_inputs,
    random_state,
)
from test_varlen import alone

import reclang
from reclang.codegen.cpp import CPP_FUNCTIONS
from reclang.codegen.render import TEMPLATES
from reclang.functions import TRITON
from reclang.runtime import cpp
from reclang.schedule import CpuLoopSchedule

CELLS = {"lstm": {"D": 3, "N": 4}, "gru": {"D": 3, "N": 5}, "elman": {"D": 3, "N": 4},
         "slstm": {"D": 3, "NH": 2, "DH": 2}, "min_gru": {"D": 3, "N": 4}, "rg_lru": {"D": 5},
         "mamba_s6": {"D": 3, "N": 2, "R": 2}}


def modules(name: str):
    """(cpu module, sequential module) of one cell, float64, the same parameters."""
    torch.manual_seed(0)
    cell = reclang.load(SPECS / f"{name}.rec", **CELLS[name])
    ours = cell.module("cpu").double()
    sequential = cell.module("sequential").double()
    sequential.load_state_dict(ours.state_dict())
    return ours, sequential


@pytest.mark.parametrize("name", sorted(CELLS))
def test_equals_sequential(name):
    ours, sequential = modules(name)
    for T in LENGTHS:
        assert_matches_reference(ours, as_reference(sequential), random_inputs(ours, 3, T),
                                 random_state(ours, 3), atol=1e-10, rtol=1e-9)


# operands that are weighted sums over all of x (with a bias, without), over both axes
# of u, and others (x[0], a product of a sum): two matmuls, and the others beside them
MIXED = """cell mixed(D = 3, E = 2, N = 4):
    input x[D]
    input u[2, E]
    param W[3, N, D] ~ normal(0, 0.5)
    param V[N, 2, E] ~ normal(0, 0.5)
    param U[2, N, N] ~ normal(0, 0.3)
    param b[N] ~ normal(0, 0.5)
    state h[N] = 0, c[N] = 0
    h[n] <- tanh(sum(m: U[0, n, m] * h[m]) + sum(d: W[0, n, d] * x[d]) + b[n])
    c[n] <- (tanh(sum(m: U[1, n, m] * c[m]) + sum(d: W[1, n, d] * x[d]))
             * sigmoid(c[n] + sum(i, e: V[n, i, e] * u[i, e]))
             + x[0] * sum(d: W[2, n, d] * x[d]))
    out y[n] = h[n] * c[n] + sum(d: W[2, n, d] * x[d]) * b[n]
"""


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_weighted_sums_over_an_input_are_one_matmul(backend):
    """The operands were four einsums and a torch.stack for LSTM; now each input's
    weighted sums are one F.linear with the biases fused, in the kernel's layout. The
    triton fused loop (under the interpreter without a GPU) shares the operands; the
    cpu kernel reads them where they are made (a list of parts: no torch.cat)."""
    torch.manual_seed(0)
    cell = reclang.loads(MIXED, "mixed.rec")
    forward = cell.source(backend).split("def forward(x")[1].split("def step(")[0]
    assert forward.count("torch.nn.functional.linear(") == 2
    assert "_ops = torch.stack" not in forward
    assert ("_ops = torch.cat" in forward) == (backend == "triton")
    assert ("_ops = [  # the operands' parts" in forward) == (backend == "cpu")
    lstm = reclang.load(SPECS / "lstm.rec", **CELLS["lstm"]).source(backend)
    assert lstm.count("torch.nn.functional.linear(") == 1 and "torch.cat" not in lstm
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    ours = cell.module(backend).double().to(device)
    sequential = cell.module("sequential").double().to(device)
    sequential.load_state_dict(ours.state_dict())
    for T in (1, 5):
        x = {k: v.to(device) for k, v in random_inputs(ours, 3, T).items()}
        s0 = {k: v.to(device) for k, v in random_state(ours, 3).items()}
        assert_matches_reference(ours, as_reference(sequential), x, s0, atol=1e-10,
                                 rtol=1e-9)


def mapping_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds `address` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            inside = low <= address < high
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    return []


@pytest.mark.skipif(not Path("/sys/kernel/mm/transparent_hugepage").exists(),
                    reason="Linux with transparent huge pages only")
def test_a_large_output_is_mapped_in_huge_pages():
    """A fresh 8 MB output was mapped in 4 KiB pages on first write (the scans spent more
    time in page faults than in arithmetic); the kernel asks for huge pages (`hg`)."""
    cell = reclang.load(SPECS / "min_gru.rec", D=2, N=512)
    with torch.no_grad():
        y, _ = cell.module("cpu")(x=torch.randn(2, 2048, 2))
    assert y.is_contiguous() and y.numel() * 4 >= 8 << 20
    inside = (y.data_ptr() + (4 << 20)) & ~((2 << 20) - 1)  # a whole 2 MiB page of it
    assert "hg" in mapping_flags(inside)


# y reads s before its update (and the new s), through sums over the units
READS_BEFORE = """cell before(D = 3, N = 2):
    input x[D]
    param W[N, D] ~ normal(0, 0.5)
    param C[D, N] ~ normal(0, 0.5)
    state s[D, N] = 0
    out y[d] = sum(n: C[d, n] * s[d, n])
    s[d, n] <- tanh(0.9 * s[d, n] + sum(e: W[n, e] * x[e]) * x[d])
    out z[d] = sum(n: s[d, n]) * y[d]
"""


@pytest.mark.parametrize("text", [None, READS_BEFORE], ids=["mamba_s6", "before"])
def test_outputs_that_sum_over_the_units_are_computed_after_the_loop(text):
    """The lane form refused Mamba S6's y = Σ_n C[n] s[d, n] + D x: the kernel's outputs
    are now the states of every step (before it too where an output reads them) and the
    outputs are computed from them; with lengths and packed sequences."""
    if text is None:
        ours, sequential = modules("mamba_s6")
        # B[n] = Σ_e Wb[n, e] x[e] is the same for every d: not a matmul over all units
        source = reclang.load(SPECS / "mamba_s6.rec", D=8, N=16).source("cpu")
        assert "functional.linear" not in source
        # no products: its 8 heads of 16 units run as one row of 128 (read contiguously)
        assert "constexpr int64_t N = 128, HEADS = 1," in source
    else:
        torch.manual_seed(0)
        cell = reclang.loads(text, "before.rec")
        ours, sequential = cell.module("cpu").double(), cell.module("sequential").double()
        sequential.load_state_dict(ours.state_dict())
    assert ours.backend == "cpu"
    reference = as_reference(sequential)
    assert_matches_reference(ours, reference, random_inputs(ours, 3, 7), random_state(ours, 3),
                             atol=1e-10, rtol=1e-9, varlen={"lengths": torch.tensor([7, 2, 5])})
    assert_matches_reference(ours, reference, random_inputs(ours, 1, 12), random_state(ours, 3),
                             atol=1e-10, rtol=1e-9,
                             varlen={"cu_seqlens": torch.tensor([0, 4, 5, 12])})


def test_blocks_of_sequences_on_threads():
    """Seven sequences in blocks of two (the last one short) on three threads; three in
    blocks of one (half of block_b: too few sequences for a block of two per thread)."""
    torch.manual_seed(0)
    cell = reclang.load(SPECS / "slstm.rec", **CELLS["slstm"])
    ours = cell.module("cpu", schedule=CpuLoopSchedule(block_b=2, threads=3)).double()
    sequential = cell.module("sequential").double()
    sequential.load_state_dict(ours.state_dict())
    for B in (7, 3):
        assert_matches_reference(ours, as_reference(sequential), random_inputs(ours, B, 6),
                                 random_state(ours, B), atol=1e-10, rtol=1e-9)


def test_lengths_and_cu_seqlens():
    ours, _ = modules("lstm")
    x = {k: v.requires_grad_() for k, v in random_inputs(ours, 4, 9).items()}
    s0 = random_state(ours, 4)
    lengths = torch.tensor([5, 1, 9, 5])
    y, final = ours(state=s0, lengths=lengths, **x)
    for b, n in enumerate(lengths.tolist()):
        want_y, want_s = alone(ours, {k: v[b:b + 1, :n] for k, v in x.items()},
                               {k: v[b:b + 1] for k, v in s0.items()})
        torch.testing.assert_close(y[b:b + 1, :n], want_y)
        for k in final:
            torch.testing.assert_close(final[k][b:b + 1], want_s[k])
    y.sum().backward()
    grad = x["x"].grad
    assert grad[1, 1:].abs().sum() == 0 and grad[1, 0].abs().sum() > 0  # padding untouched
    cu = torch.tensor([0, 4, 5, 12])
    x1 = random_inputs(ours, 1, 12)
    y, final = ours(state=random_state(ours, 3), cu_seqlens=cu, **x1)
    want, _ = alone(ours, {"x": x1["x"][:, 5:12]}, {k: v[2:3] for k, v in
                                                   random_state(ours, 3).items()})
    torch.testing.assert_close(y[:, 5:12], want)


def test_without_a_backward_two_steps_of_states_are_kept():
    """Under no_grad the kernel keeps the states before and after a step, not all T."""
    ours, sequential = modules("lstm")
    for T in (1, 2, 7):
        x, s0 = random_inputs(ours, 3, T), random_state(ours, 3)
        with torch.no_grad():
            y, final = ours(state=s0, **x)
        want_y, want_final = sequential(state=s0, **x)
        torch.testing.assert_close(y, want_y, atol=1e-12, rtol=1e-10)
        for k in final:
            torch.testing.assert_close(final[k], want_final[k], atol=1e-12, rtol=1e-10)


def test_float32_is_the_float_kernel():
    ours, sequential = modules("gru")
    x = random_inputs(ours, 5, 11)
    want, _ = sequential(**x)
    got, _ = ours.float()(x=x["x"].float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5)


def test_calls_after_the_first_neither_build_nor_check_the_library(monkeypatch):
    """Every call looked the library up, running `g++ --version` for its key."""
    ours, _ = modules("elman")
    x = random_inputs(ours, 2, 3)
    ours(**x)
    monkeypatch.setattr(cpp, "build", lambda *a: pytest.fail("looked up again"))
    monkeypatch.setattr(ours._generated, "build", cpp.build)
    y, _ = ours(**{k: v.requires_grad_() for k, v in x.items()})
    y.sum().backward()


def test_every_kernel_spelling_is_defined_in_cpp():
    """The C++ spellings are a view of the Triton ones: each has a definition."""
    heads = {spelling.split("(")[0] for spelling in TRITON.values()} - {""}  # "": arithmetic
    assert heads <= set(CPP_FUNCTIONS), heads - set(CPP_FUNCTIONS)
    template = "".join((TEMPLATES / name).read_text()
                       for name in ("cpu_loop.cpp.jinja", "cpu_gates.cpp.jinja"))
    for name in CPP_FUNCTIONS:
        assert re.search(rf"inline T {name.replace('tl.', 'tl_')}\(", template), name


SOURCE = 'extern "C" int answer() { return 42; }\n'


def test_a_cached_library_is_trusted_only_after_its_hash_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("RECLANG_CACHE", str(tmp_path))
    monkeypatch.setattr(cpp, "_loaded", {})
    assert cpp.build(SOURCE, "probe").answer() == 42
    (library,) = (tmp_path / "cpp").glob("probe_*.so")
    record = library.with_suffix(".sha256")
    compiles = []
    compile_ = cpp._compile
    monkeypatch.setattr(cpp, "_compile", lambda *a: compiles.append(a) or compile_(*a))

    def again():
        return cpp._library(SOURCE, library.stem, cpp.compiler())
    assert again() == library and not compiles  # intact: loaded as it is
    planted = tmp_path / "planted"
    planted.write_bytes(b"planted")
    planted.replace(library)  # a library that does not match its record
    assert again() == library and len(compiles) == 1
    assert library.read_bytes() != b"planted"
    assert record.read_text() == cpp._digest(library)
    record.unlink()  # no record: not trusted either
    assert again() == library and len(compiles) == 2 and record.exists()


@pytest.mark.parametrize("name, compiled, pytorch", [
    ("lstm", "cpu", "sequential"), ("min_gru", "scan", "scan"), ("gla", "chunk", "chunk"),
    ("mamba_s6", "scan", "scan"), ("lmu", "sequential", "sequential")])
def test_what_auto_picks_on_the_cpu(name, compiled, pytorch, monkeypatch):
    cell = reclang.load(SPECS / f"{name}.rec")
    monkeypatch.setenv("RECLANG_AUTO_COMPILED", "1")
    assert cell.auto_backends()[0] == compiled
    assert cell.auto_backends()[1] != "cpu"  # on CUDA tensors: never the CPU kernel
    monkeypatch.setenv("RECLANG_AUTO_COMPILED", "0")  # the pin of the test suite
    assert cell.auto_backends()[0] == pytorch


def test_compiler_errors_and_a_missing_compiler(monkeypatch):
    with pytest.raises(cpp.CompileError, match="a bug of reclang"):
        cpp.build("this is not C++", "broken")
    monkeypatch.setenv("RECLANG_AUTO_COMPILED", "1")
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    cell = reclang.load(SPECS / "lstm.rec", **CELLS["lstm"])
    verdict = cell.verdict("cpu")
    assert not verdict.supported and "needs a C++ compiler" in verdict.reason
    assert cell.auto_backends()[0] == "sequential"
