"""reclang.nn.from_torch and to_torch against torch.nn.LSTM, GRU and RNN themselves, in
float64: outputs, final states and gradients, for every num_layers (1, 2),
bidirectional, bias, batch_first and PackedSequence input."""

import itertools

import pytest
import torch
from helpers import SPECS
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import reclang
from reclang.nn import Stack, from_torch, to_torch

KINDS = {"lstm": lambda **kw: torch.nn.LSTM(**kw), "gru": lambda **kw: torch.nn.GRU(**kw),
         "rnn_tanh": lambda **kw: torch.nn.RNN(**kw),
         "rnn_relu": lambda **kw: torch.nn.RNN(nonlinearity="relu", **kw)}
CONFIGS = list(itertools.product(KINDS, (1, 2), (False, True), (False, True), (False, True),
                                 (False, True)))
D, N = 3, 4
LENGTHS = [5, 2, 4]


def torch_rnn(kind, num_layers, bidirectional, bias, batch_first):
    torch.manual_seed(0)
    return KINDS[kind](input_size=D, hidden_size=N, num_layers=num_layers, bias=bias,
                       batch_first=batch_first, bidirectional=bidirectional).double()


def call_inputs(rnn, packed: bool):
    """An input (a padded batch, or a PackedSequence of unsorted lengths) and an hx that
    requires grad."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(len(LENGTHS), max(LENGTHS), D, generator=gen, dtype=torch.float64)
    layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
    hx = [torch.randn(layers, len(LENGTHS), N, generator=gen, dtype=torch.float64)
          .requires_grad_() for _ in range(2 if isinstance(rnn, torch.nn.LSTM) else 1)]
    x.requires_grad_()
    if packed:
        data = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True,
                                    enforce_sorted=False)
    else:
        data = x if rnn.batch_first else x.transpose(0, 1)
    return x, data, (tuple(hx) if len(hx) == 2 else hx[0]), hx


def flat(y, h):
    y = y.data if isinstance(y, PackedSequence) else y
    return [y, *(h if isinstance(h, tuple) else (h,))]


def assert_same_call(mine, theirs, packed):
    x, data, hx, leaves = call_inputs(theirs, packed)
    got = mine(data, hx)
    want = theirs(data, hx)
    if packed:
        assert isinstance(got[0], PackedSequence)
        for a, b in zip(got[0][1:], want[0][1:]):
            assert (a is None and b is None) or torch.equal(a, b)
    got, want = flat(*got), flat(*want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    seeds = [torch.randn_like(b) for b in want]
    wrt = [x, *leaves]
    losses = [sum((t * s).sum() for t, s in zip(ts, seeds)) for ts in (got, want)]
    first = torch.autograd.grad(losses[0], wrt, retain_graph=True)  # the packing is shared
    for a, b in zip(first, torch.autograd.grad(losses[1], wrt)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind, num_layers, bidirectional, bias, batch_first, packed", CONFIGS)
def test_from_torch_is_exact(kind, num_layers, bidirectional, bias, batch_first, packed):
    theirs = torch_rnn(kind, num_layers, bidirectional, bias, batch_first)
    mine = from_torch(theirs)
    assert_same_call(mine, theirs, packed)
    assert_same_call(mine, to_torch(mine), packed)   # and back


def test_from_torch_without_hx_and_unbatched():
    theirs = torch_rnn("lstm", 2, True, True, False)
    mine = from_torch(theirs)
    x = torch.randn(6, 2, D, dtype=torch.float64)
    for got, want in zip(flat(*mine(x)), flat(*theirs(x))):
        torch.testing.assert_close(got, want)
    for got, want in zip(flat(*mine(x[:, 0])), flat(*theirs(x[:, 0]))):
        torch.testing.assert_close(got, want)


def test_from_torch_refusals():
    with pytest.raises(ValueError, match="proj_size=2 is not supported"):
        from_torch(torch.nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(TypeError, match="takes a torch.nn.LSTM, GRU or RNN, got Linear"):
        from_torch(torch.nn.Linear(3, 4))


def test_to_torch_of_catalogue_cells():
    """Stacks of specs/lstm.rec, gru.rec and elman.rec convert to torch's modules."""
    for name, cls in (("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU), ("elman", torch.nn.RNN)):
        cell = reclang.load(SPECS / f"{name}.rec", D=4, N=4)
        stack = Stack(cell, 2).double()
        rnn = to_torch(stack)
        assert type(rnn) is cls and rnn.num_layers == 2
        x = torch.randn(2, 5, 4, dtype=torch.float64)
        torch.testing.assert_close(stack(x=x)[0], rnn(x.transpose(0, 1))[0].transpose(0, 1))


def test_to_torch_refuses_other_cells():
    with pytest.raises(TypeError, match="to_torch takes a model of the cells"):
        to_torch(reclang.load(SPECS / "min_gru.rec").module())
    text = (SPECS / "elman.rec").read_text().replace("tanh(sum", "sigmoid(sum")
    impostor = reclang.loads(text, "elman.rec", D=3, N=3).module()
    with pytest.raises(ValueError, match="does not compute torch.nn.RNN's equations"):
        to_torch(impostor)
