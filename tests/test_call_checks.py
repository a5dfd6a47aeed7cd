"""The checks of a module call: wrong `state=` arguments, positional inputs, empty
batches, variable-length calls and dtypes each give a message that names the argument
and what was expected, on every backend, before any generated code runs."""

from pathlib import Path

import pytest
import torch

import reclang

SPECS = Path(__file__).resolve().parent.parent / "specs"


def gla():
    return reclang.load(SPECS / "gla.rec", H=2, K=4, V=4).module()


def inputs(B=2, T=5, dtype=torch.float32):
    torch.manual_seed(0)
    x = {k: torch.randn(B, T, 2, 4, dtype=dtype) for k in "qkv"}
    x["g"] = torch.nn.functional.logsigmoid(torch.randn(B, T, 2, 4, dtype=dtype))
    return x


@pytest.mark.parametrize("state, error, message", [
    (torch.zeros(2, 2, 4, 4), TypeError,
     "state must be a dict of states (S) -> tensors [B, ...], got Tensor"),
    ({"s": torch.zeros(2, 2, 4, 4)}, TypeError, "gla has no state 's'; its states are S"),
    ({"S": torch.zeros(3, 2, 4, 4)}, ValueError, "state S: expected shape [2, 2, 4, 4], got"),
    ({"S": [[0.0]]}, TypeError,
     "state S must be a floating-point tensor of shape [2, 2, 4, 4], got list"),
    ({"S": torch.zeros(2, 2, 4, 4, dtype=torch.long)}, TypeError, "got an int64 tensor"),
    ({"S": torch.zeros(2, 2, 4, 4, dtype=torch.complex64)}, TypeError,
     "state S is real, got a complex tensor"),
])
def test_wrong_state_arguments(state, error, message):
    m, x = gla(), inputs()
    with pytest.raises(error) as info:
        m(state=state, **x)
    assert message in str(info.value)
    with pytest.raises(error) as info:
        m.step(state=state, **{k: v[:, 0] for k, v in x.items()})
    assert message in str(info.value)


def test_a_positional_input_does_not_become_the_state():
    m, x = gla(), inputs()
    with pytest.raises(TypeError, match=r"gla takes its inputs and state by name: "
                                        r"m\(q=..., k=..., v=..., g=..., state=...\); got 1"):
        m(x["q"], k=x["k"], v=x["v"], g=x["g"])
    with pytest.raises(TypeError, match="by name"):
        m.step({"S": torch.zeros(2, 2, 4, 4)}, **{k: v[:, 0] for k, v in x.items()})


def _runnable_backends(cell):
    return [v.backend for v in cell.verdicts
            if v.supported and v.backend != "triton"]


@pytest.mark.parametrize("spec", ["gla.rec", "lru.rec", "lstm.rec"])
def test_an_empty_batch_is_refused_on_every_backend(spec):
    cell = reclang.load(SPECS / spec, D=4, N=4) if spec != "gla.rec" else \
        reclang.load(SPECS / spec, K=4, V=4)
    for backend in _runnable_backends(cell):
        m = cell.module(backend)
        xs = {d.name: torch.randn(0, 4, *d.shape) for d in cell.ir.inputs}
        with pytest.raises(ValueError, match=r"the batch is empty \(B = 0\)"):
            m(**xs)
        with pytest.raises(ValueError, match=r"the batch is empty \(B = 0\)"):
            m.step(**{k: v[:, 0] for k, v in xs.items()})


@pytest.mark.parametrize("spec", ["gla.rec", "lru.rec"])
def test_variable_length_calls_check_the_state_rows(spec):
    cell = reclang.load(SPECS / spec)
    for backend in _runnable_backends(cell):
        m = cell.module(backend)
        xs = {d.name: 0.1 * torch.randn(3, 6, *d.shape) for d in cell.ir.inputs}
        wrong = {d.name: torch.zeros(5, *d.shape) for d in cell.ir.states[:1]}
        expected = f"state {cell.ir.states[0].name}: expected shape [3, "
        with pytest.raises(ValueError, match=expected.replace("[", r"\[")):
            m(state=wrong, lengths=torch.tensor([6, 2, 4]), **xs)
        packed = {k: v[:1] for k, v in xs.items()}
        with pytest.raises(ValueError, match=expected.replace("[3", r"\[2")):
            m(state=wrong, cu_seqlens=torch.tensor([0, 2, 6]), **packed)
        with pytest.raises(TypeError, match="state must be a dict"):
            m(state=torch.zeros(3), lengths=torch.tensor([6, 2, 4]), **xs)


def test_float_lengths_are_refused_not_truncated():
    m, x = gla(), inputs(T=5)
    with pytest.raises(ValueError, match=r"lengths must be integers, got float32 values "
                                         r"\[2.5, 5.0\]"):
        m(lengths=torch.tensor([2.5, 5.0]), **x)
    with pytest.raises(ValueError, match="lengths must be integers"):
        m(lengths=[2.5, 5], **x)
    packed = {k: v[:1] for k, v in x.items()}
    with pytest.raises(ValueError, match="cu_seqlens must be integers"):
        m(cu_seqlens=torch.tensor([0.0, 2.5, 5.0]), **packed)


def test_a_float64_module_refuses_float32_inputs():
    m = reclang.load(SPECS / "lstm.rec", D=3, N=4).module().double()
    with pytest.raises(TypeError, match=r"input x is float32 but the parameters of lstm are "
                                        r"float64: convert the inputs \(.to\(torch.float64\)\) "
                                        r"or the module \(m.to\(torch.float32\)\)"):
        m(x=torch.randn(2, 3, 3))
    with pytest.raises(TypeError, match="input x is bfloat16 but the parameters"):
        m(x=torch.randn(2, 3, 3).bfloat16())


def test_inputs_of_different_dtypes_are_refused():
    x = inputs()
    x["k"] = x["k"].double()
    with pytest.raises(TypeError, match="input k is float64 but input q is float32"):
        gla()(**x)


def test_dtypes_that_stay_allowed():
    """bf16/fp16 into a float32 module (mixed precision) and float64 into float32
    (the parameters are widened, nothing is lost)."""
    cell = reclang.load(SPECS / "lstm.rec", D=3, N=4)
    m = cell.module()
    x = torch.randn(2, 3, 3)
    assert m(x=x.bfloat16())[0].dtype == torch.bfloat16
    assert m(x=x.half())[0].dtype == torch.float16
    assert m(x=x.double())[0].dtype == torch.float64


def test_checks_trace_with_torch_compile_fullgraph():
    """The checks read shapes and dtypes only (no .item()), so torch.compile traces them
    in one graph."""
    m, x = gla(), inputs()
    state = {"S": torch.zeros(2, 2, 4, 4)}

    def checked(state, **x):
        m._no_positional(())
        xs, batch, _ = m._check_inputs(x, sequence=True)
        m._check_state_arg(state, batch)
        return xs[0] * 2

    compiled = torch.compile(checked, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(state, **x), x["q"] * 2)
