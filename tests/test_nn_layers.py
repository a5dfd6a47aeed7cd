"""reclang.nn's Stack and Bidirectional against modules composed by hand, on every
backend each cell's plan allows (triton under Triton's interpreter on the CPU): float64
outputs, final states and gradients of the inputs, initial states and parameters."""

import itertools

import pytest
import torch
from helpers import SPECS

import reclang
from reclang.nn import Bidirectional, Stack

F = torch.nn.functional
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CELLS = {  # one cell per form; widths equal, so that each layer reads the previous one
    "gru": reclang.load(SPECS / "gru.rec", D=3, N=3),                    # nonlinear
    "min_gru": reclang.load(SPECS / "min_gru.rec", D=3, N=3),            # diag
    "gla": reclang.load(SPECS / "gla.rec", H=2, K=3, V=3),               # mat-decay
}
BI_CELLS = {**CELLS, "delta_net": reclang.load(SPECS / "delta_net.rec", H=2, K=3, V=3)}  # dplr
# every input of the next layer reads the previous layer's one output
CONNECT = {"gla": {"q": "o", "k": "o", "v": "o", "g": "o"}}
GATES = {"g": lambda x: F.logsigmoid(x), "beta": torch.sigmoid}


def backends(cells: dict) -> list:
    return [(name, v.backend) for name, cell in cells.items() for v in cell.verdicts
            if v.supported and v.backend != "step"]


def inputs_of(cell, B, T, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = {d.name: d.shape for d in cell.ir.inputs}
    return {k: GATES.get(k, lambda x: x)(
        torch.randn(B, T, *s, generator=gen, dtype=torch.float64, device=DEVICE))
        for k, s in shape.items()}


def leaves(*trees):
    """The tensors of nested dicts and lists, in a fixed order."""
    out = []
    for tree in trees:
        if torch.is_tensor(tree):
            out.append(tree)
        elif isinstance(tree, dict):
            out += leaves(*tree.values())
        elif isinstance(tree, (list, tuple)):
            out += leaves(*tree)
    return out


def assert_same(got, want, wrt, wrt_want=None):
    """Equal values, and equal gradients of one random projection of them (with respect
    to `wrt`, or to `wrt_want` for `want`: the same parameters in other modules)."""
    got, want = leaves(got), leaves(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    seeds = [torch.randn_like(w) for w in want]
    loss = [sum((t * s).sum() for t, s in zip(ts, seeds)) for ts in (got, want)]
    for g, w in zip(torch.autograd.grad(loss[0], wrt, retain_graph=True, allow_unused=True),
                    torch.autograd.grad(loss[1], wrt_want or wrt, allow_unused=True)):
        if w is None:
            assert g is None or g.abs().max() == 0
        else:
            torch.testing.assert_close(g, w)


def random_states(modules, B, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return [{d.name: (0.5 * torch.randn(B, *d.shape, generator=gen, dtype=torch.float64)
                      ).to(DEVICE).requires_grad_() for d in m.ir.states} for m in modules]


@pytest.mark.parametrize("name, backend", backends(CELLS))
@pytest.mark.parametrize("residual", [False, True])
def test_stack_is_layers_composed_by_hand(name, backend, residual):
    cell = CELLS[name]
    torch.manual_seed(0)
    stack = Stack(cell, 3, residual=residual, connect=CONNECT.get(name), backend=backend)
    stack = stack.double().to(DEVICE)
    layers = [cell.module("sequential").double().to(DEVICE) for _ in range(3)]
    for mine, theirs in zip(layers, stack.layers):
        mine.load_state_dict(theirs.state_dict())
    B, T = 2, 5
    x = {k: v.requires_grad_() for k, v in inputs_of(cell, B, T).items()}
    s0 = random_states(layers, B)
    y, final = stack(state=s0, **x)

    want, states, h = None, [], x
    for i, layer in enumerate(layers):
        out, s = layer(state=s0[i], **h)
        states.append(s)
        if residual and i > 0:
            out = out + h[next(iter(h))]
        h, want = {k: out for k in h}, out
    shared = [*x.values(), *leaves(s0)]
    assert_same((y, final), (want, states),
                shared + [p for m in stack.layers for p in m.parameters()],
                shared + [p for m in layers for p in m.parameters()])


@pytest.mark.parametrize("name", list(CELLS))
def test_stack_step_is_the_whole_sequence(name):
    cell = CELLS[name]
    torch.manual_seed(0)
    stack = Stack(cell, 2, residual=True, connect=CONNECT.get(name)).double().to(DEVICE)
    x = inputs_of(cell, 2, 6)
    s0 = random_states(stack.layers, 2)
    y, final = stack(state=s0, **x)
    state, steps = s0, []
    for t in range(6):
        y_t, state = stack.step(state=state, **{k: v[:, t] for k, v in x.items()})
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y)
    for got, want in zip(leaves(state), leaves(final)):
        torch.testing.assert_close(got, want)


def test_stack_dropout_only_between_layers():
    """dropout=1 in training mode zeroes what layer 0 passes on, never the last output."""
    cell = CELLS["min_gru"]
    stack = Stack(cell, 2, dropout=1.0).double()
    x = inputs_of(cell, 2, 4)
    y, _ = stack.train()(**x)
    alone, _ = stack.layers[1](x=torch.zeros_like(x["x"]))
    torch.testing.assert_close(y, alone)
    assert y.abs().max() > 0
    y_eval, _ = stack.eval()(**x)
    torch.testing.assert_close(y_eval, stack.layers[1](x=stack.layers[0](**x)[0])[0])


def test_stack_refuses_an_unconnected_input():
    with pytest.raises(ValueError, match="give connect="):
        Stack(CELLS["gla"], 2)
    with pytest.raises(ValueError, match="every input of the next layer"):
        Stack(CELLS["gla"], 2, connect={"q": "o", "k": "o", "v": "o"})
    with pytest.raises(TypeError, match="a list of 2 layer states"):
        Stack(CELLS["gru"], 2)(x=torch.randn(1, 2, 3), state={"h": torch.zeros(1, 3)})


def reverse_by_hand(module, x: dict, state: dict | None):
    """One sequence [1, L, ...] run from its end by a plain call on flipped inputs."""
    y, s = module(state=state, **{k: v.flip(1) for k, v in x.items()})
    return y.flip(1), s


# the merge joins the two passes' outputs outside the backends: both merges on the
# sequential backend, concat (each direction's outputs seen apart) on every backend
@pytest.mark.parametrize("name, backend, merge",
                         [(n, b, m) for n, b in backends(BI_CELLS)
                          for m in (("concat", "sum") if b == "sequential" else ("concat",))])
def test_bidirectional_is_two_passes_by_hand(name, backend, merge):
    """Whole sequences, a right-padded batch (lengths) and packed ones (cu_seqlens)
    against each sequence run alone, forward and flipped."""
    cell = BI_CELLS[name]
    torch.manual_seed(0)
    bi = Bidirectional(cell, merge, backend=backend).double().to(DEVICE)
    fwd, bwd = (cell.module("sequential").double().to(DEVICE) for _ in "fb")
    fwd.load_state_dict(bi.forward_layer.state_dict())
    bwd.load_state_dict(bi.backward_layer.state_dict())
    join = (lambda a, b: torch.cat([a, b], -1)) if merge == "concat" else torch.add
    lengths = [5, 2, 4]
    x = {k: v.requires_grad_() for k, v in inputs_of(cell, 3, 5).items()}
    s0 = dict(zip(("forward", "backward"), random_states([fwd, bwd], 3)))
    for varlen in ("whole", "lengths", "cu_seqlens"):
        if varlen == "cu_seqlens":
            xs = {k: torch.cat([v[b, :n] for b, n in enumerate(lengths)])[None]
                  for k, v in x.items()}
            cu = torch.tensor([0, 5, 7, 11])
            y, final = bi(state=s0, cu_seqlens=cu, **xs)
            ys = [y[:, a:b] for a, b in itertools.pairwise(cu)]
        elif varlen == "lengths":
            y, final = bi(state=s0, lengths=torch.tensor(lengths), **x)
            assert y[1, 2:].abs().max() == 0
            ys = [y[b:b + 1, :n] for b, n in enumerate(lengths)]
        else:
            y, final = bi(state=s0, **x)
            ys = [y[b:b + 1] for b in range(3)]
        want, states = [], {"forward": [], "backward": []}
        for b, n in enumerate(lengths if varlen != "whole" else [5, 5, 5]):
            seq = {k: v[b:b + 1, :n] for k, v in x.items()}
            one = {d: {k: v[b:b + 1] for k, v in s0[d].items()} for d in s0}
            yf, sf = fwd(state=one["forward"], **seq)
            yb, sb = reverse_by_hand(bwd, seq, one["backward"])
            want.append(join(yf, yb))
            states["forward"].append(sf)
            states["backward"].append(sb)
        want_final = {d: {k: torch.cat([s[k] for s in states[d]]) for k in states[d][0]}
                      for d in states}
        shared = [*x.values(), *leaves(s0)]
        assert_same((ys, final), (want, want_final),
                    shared + list(bi.forward_layer.parameters()) +
                    list(bi.backward_layer.parameters()),
                    shared + list(fwd.parameters()) + list(bwd.parameters()))


def test_bidirectional_layers_in_a_stack():
    """A Bidirectional layer with concat doubles the width: the next layer reads 2N."""
    torch.manual_seed(0)
    first, second = (reclang.load(SPECS / "gru.rec", D=d, N=3) for d in (2, 6))
    stack = Stack(lambda i: Bidirectional(first if i == 0 else second), 2).double()
    y, final = stack(x=torch.randn(2, 4, 2, dtype=torch.float64))
    assert y.shape == (2, 4, 6) and set(final[1]) == {"forward", "backward"}
    with pytest.raises(TypeError, match="has no step form"):
        stack.step(x=torch.randn(2, 2, dtype=torch.float64))
