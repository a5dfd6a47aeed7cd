"""torch.func (vmap, grad, jacrev) on every CPU backend, one spec of each form, against
eager autograd in float64: the backends' autograd Functions are in the setup_context
form with a vmap rule, and nothing branches on tensor values."""

from __future__ import annotations

import pytest
import torch
from helpers import MATRIX_TRANSFORMS, random_inputs
from test_torch_compile import CASES, module
from torch.func import functional_call, grad, jacrev, vmap


def real_outputs(y) -> torch.Tensor:
    """Every output of a call as one real tensor [B, T, ...]."""
    y = y if torch.is_tensor(y) else torch.cat([v.flatten(2) for v in y.values()], -1)
    return y.real if y.is_complex() else y


def batches(m, spec: str, n: int, T: int = 5) -> list[dict]:
    return [random_inputs(m, 2, T, seed=s, **MATRIX_TRANSFORMS.get(spec, {}))
            for s in range(1, n + 1)]


@pytest.mark.parametrize("spec,backend", CASES)
def test_vmap_equals_a_loop(spec, backend):
    m = module(spec, backend)
    names = [d.name for d in m.ir.inputs]
    xs = batches(m, spec, 3)

    def f(*args):
        return real_outputs(m(**dict(zip(names, args)))[0])

    got = vmap(f)(*[torch.stack([x[n] for x in xs]) for n in names])
    want = torch.stack([f(*[x[n] for n in names]) for x in xs])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("spec,backend", CASES)
def test_grad_equals_autograd(spec, backend):
    """torch.func.grad of a loss with respect to the parameters and the inputs."""
    m = module(spec, backend)
    (x,) = batches(m, spec, 1)
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, inputs):
        return real_outputs(functional_call(m, p, (), inputs)[0]).square().sum()

    got = grad(loss, argnums=(0, 1))(params, x)
    leaves = [v.clone().requires_grad_() for v in (*params.values(), *x.values())]
    p, inputs = dict(zip(params, leaves)), dict(zip(x, leaves[len(params):]))
    want = torch.autograd.grad(loss(p, inputs), leaves)
    for g, w in zip((*got[0].values(), *got[1].values()), want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("spec,backend", CASES)
def test_jacrev_equals_autograd(spec, backend):
    """The Jacobian of the outputs with respect to the first input (jacrev: vmap over
    the backward pass)."""
    m = module(spec, backend)
    (x,) = batches(m, spec, 1, T=3)
    x = {k: v[:1] for k, v in x.items()}
    first = m.ir.inputs[0].name

    def f(a):
        return real_outputs(m(**{**x, first: a})[0])

    got = jacrev(f)(x[first])
    want = torch.autograd.functional.jacobian(f, x[first])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("spec", ["min_gru", "s4d", "gla", "delta_net"])
def test_vmap_grad_and_jacrev_on_the_triton_kernels(spec):
    """The gated scan, the diagonal scan and the matrix-state kernels (chunk and
    recurrent forms) fold the vmapped axis into the batch, forward and backward; their
    backward kernels run on unwrapped tensors (on CUDA, else in Triton's interpreter)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m = module(spec, "triton").to(device)
    names = [d.name for d in m.ir.inputs]
    xs = [{k: v.to(device) for k, v in x.items()} for x in batches(m, spec, 2, T=3)]

    def f(*args):
        return real_outputs(m(**dict(zip(names, args)))[0])

    got = vmap(f)(*[torch.stack([x[n] for x in xs]) for n in names])
    want = torch.stack([f(*[x[n] for n in names]) for x in xs])
    torch.testing.assert_close(got, want)
    first, rest = xs[0][names[0]][:1], [xs[0][n][:1] for n in names[1:]]
    g = grad(lambda a: f(a, *rest).square().sum())(first)
    leaf = first.clone().requires_grad_()
    torch.testing.assert_close(g, torch.autograd.grad(f(leaf, *rest).square().sum(), leaf)[0])
    torch.testing.assert_close(jacrev(lambda a: f(a, *rest))(first),
                               torch.autograd.functional.jacobian(lambda a: f(a, *rest), first))


def test_grad_and_jacrev_on_the_triton_fused_loop():
    """The fused loop's backward kernel runs on unwrapped tensors; vmap of its forward
    is refused, as the module makes its constants like the (vmapped) inputs."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m = module("lstm", "triton").to(device)
    (x,) = batches(m, "lstm", 1, T=3)
    a = x["x"][:1].to(device)

    def f(a):
        return m(x=a)[0]

    leaf = a.clone().requires_grad_()
    torch.testing.assert_close(grad(lambda a: f(a).square().sum())(a),
                               torch.autograd.grad(f(leaf).square().sum(), leaf)[0])
    torch.testing.assert_close(jacrev(f)(a), torch.autograd.functional.jacobian(f, a))
    with pytest.raises(NotImplementedError, match="constants or weights"):
        vmap(f)(torch.stack([a, 2 * a]))
