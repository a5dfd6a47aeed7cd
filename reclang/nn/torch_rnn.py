"""torch.nn.LSTM, GRU and RNN as reclang models, and back.

    model = from_torch(torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True))
    output, (h_n, c_n) = model(x)             # torch's calling convention and layouts
    lstm = to_torch(model)                    # a torch.nn.LSTM with the same weights

`from_torch` builds a `Stack` (of `Bidirectional` layers when the module is
bidirectional) of the cells below, whose equations and gate orders are torch's, and
copies the weights: per layer, W = weight_ih viewed [gates, N, D], U = weight_hh
viewed [gates, N, N]; LSTM and RNN add their two biases into b, GRU keeps both (bw,
bu: torch's b_hn sits inside the reset product). `model.stack` is that Stack.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..compile import loads
from .layers import Bidirectional, Stack

INIT = "~ uniform(-N ** -0.5, N ** -0.5)"  # torch's: U(-1/sqrt(N), 1/sqrt(N)) for every weight
SPECS = {
    # name: (torch class, gates, parameters with bias, without, equations)
    "lstm": ("LSTM", 4, "W[4, N, D], U[4, N, N], b[4, N]", "W[4, N, D], U[4, N, N]", """
    state h[N] = 0, c[N] = 0
    z[g, n] = sum(d: W[g, n, d] * x[d]) + sum(m: U[g, n, m] * h[m]){b}
    c[n] <- sigmoid(z[1, n]) * c[n] + sigmoid(z[0, n]) * tanh(z[2, n])
    h[n] <- sigmoid(z[3, n]) * tanh(c[n])
    out y[n] = h[n]
""", " + b[g, n]"),
    "gru": ("GRU", 3, "W[3, N, D], U[3, N, N], bw[3, N], bu[3, N]", "W[3, N, D], U[3, N, N]", """
    state h[N] = 0
    wx[g, n] = sum(d: W[g, n, d] * x[d]){bw}
    uh[g, n] = sum(m: U[g, n, m] * h[m]){bu}
    r[n] = sigmoid(wx[0, n] + uh[0, n])
    z[n] = sigmoid(wx[1, n] + uh[1, n])
    candidate[n] = tanh(wx[2, n] + r[n] * uh[2, n])
    h[n] <- (1 - z[n]) * candidate[n] + z[n] * h[n]
    out y[n] = h[n]
""", (" + bw[g, n]", " + bu[g, n]")),
}
for _name, _f in (("elman", "tanh"), ("elman_relu", "relu")):
    SPECS[_name] = ("RNN", 1, "W[N, D], U[N, N], b[N]", "W[N, D], U[N, N]", f"""
    state h[N] = 0
    h[n] <- {_f}(sum(d: W[n, d] * x[d]) + sum(m: U[n, m] * h[m]){{b}})
    out y[n] = h[n]
""", " + b[n]")


def spec(name: str, bias: bool) -> str:
    """The text of one of the cells above, with or without its biases."""
    _, _, with_bias, without, body, terms = SPECS[name]
    keys = ("bw", "bu") if name == "gru" else ("b",)
    terms = terms if isinstance(terms, tuple) else (terms,)
    body = body.format(**{k: t if bias else "" for k, t in zip(keys, terms)})
    return (f"# torch.nn.{SPECS[name][0]}'s equations and gate order (reclang.nn.torch_rnn)\n"
            f"cell {name}(D = 1, N = 1):\n    input x[D]\n"
            f"    param {with_bias if bias else without} {INIT}" + body)


def _kind(module) -> str:
    if isinstance(module, nn.LSTM):
        kind = "lstm"
    elif isinstance(module, nn.GRU):
        kind = "gru"
    elif isinstance(module, nn.RNN):
        kind = "elman" if module.nonlinearity == "tanh" else "elman_relu"
    else:
        raise TypeError(f"from_torch takes a torch.nn.LSTM, GRU or RNN, got "
                        f"{type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"from_torch: proj_size={module.proj_size} is not supported (only "
                         "LSTMs without projection, proj_size=0)")
    return kind


class TorchRNN(nn.Module):
    """A Stack of torch's RNN cells with torch.nn.LSTM/GRU/RNN's calling convention:
    `model(input, hx=None) -> (output, h_n)` (LSTM: `(output, (h_n, c_n))`), `input`
    [T, B, D] ([B, T, D] with batch_first; [T, D] unbatched) or a PackedSequence
    (then the output is one too), h [num_layers * num_directions, B, N]."""

    def __init__(self, kind: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.kind, self.input_size, self.hidden_size = kind, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.bidirectional = bidirectional
        text = spec(kind, bias)
        directions = 2 if bidirectional else 1
        cells = [loads(text, f"<{kind}>", D=input_size, N=hidden_size),
                 loads(text, f"<{kind}>", D=hidden_size * directions, N=hidden_size)]

        def layer(i: int) -> nn.Module:
            cell = cells[min(i, 1)]
            if bidirectional:
                return Bidirectional(cell, backend=backend, device=device, dtype=dtype)
            return cell.module(backend, device=device, dtype=dtype)

        self.stack = Stack(layer, num_layers, dropout=dropout)

    def extra_repr(self) -> str:
        return (f"{SPECS[self.kind][0]}({self.input_size}, {self.hidden_size}, num_layers="
                f"{self.num_layers}, bias={self.bias}, batch_first={self.batch_first}, "
                f"bidirectional={self.bidirectional})")

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            x, lengths = pad_packed_sequence(input, batch_first=True)
        else:
            x = input if self.batch_first or input.dim() == 2 else input.transpose(0, 1)
        unbatched = not packed and input.dim() == 2
        if unbatched:
            x = x[None]
            hx = None if hx is None else _map(lambda h: h[:, None], hx)
        y, final = self.stack(x=x, state=self._state(hx), lengths=lengths)
        h_n = self._h_n(final)
        if unbatched:
            return y[0], _map(lambda h: h[:, 0], h_n)
        if packed:
            return _packed_like(input, y, lengths), h_n
        return (y if self.batch_first else y.transpose(0, 1)), h_n

    def _names(self) -> tuple:
        return ("h", "c") if self.kind == "lstm" else ("h",)

    def _state(self, hx) -> list | None:
        """torch's hx ([L * directions, B, N], a pair for an LSTM) as the Stack's state."""
        if hx is None:
            return None
        hx = hx if isinstance(hx, tuple) else (hx,)
        per = dict(zip(self._names(), hx))
        if not self.bidirectional:
            return [{k: v[i] for k, v in per.items()} for i in range(self.num_layers)]
        return [{d: {k: v[2 * i + j] for k, v in per.items()}
                 for j, d in enumerate(("forward", "backward"))} for i in range(self.num_layers)]

    def _h_n(self, final: list):
        parts = [[s["forward"], s["backward"]] if self.bidirectional else [s] for s in final]
        h = tuple(torch.stack([s[k] for layer in parts for s in layer]) for k in self._names())
        return h if self.kind == "lstm" else h[0]


def _map(fn, hx):
    return tuple(fn(h) for h in hx) if isinstance(hx, tuple) else fn(hx)


def _packed_like(packed: PackedSequence, y: torch.Tensor, lengths) -> PackedSequence:
    """`y` [B, T, ...] (the batch in its original order) packed as `packed` is: the same
    batch_sizes, sorted_indices and unsorted_indices, as torch's RNNs return."""
    order = packed.sorted_indices
    if order is not None:
        y, lengths = y.index_select(0, order.to(y.device)), lengths[order.cpu()]
    data = pack_padded_sequence(y, lengths, batch_first=True).data
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                          packed.unsorted_indices)


def from_torch(module: nn.Module, backend: str = "auto") -> TorchRNN:
    """A reclang model with `module`'s weights, outputs and states (torch.nn.LSTM, GRU or
    RNN of any num_layers, bias, batch_first, bidirectional; proj_size=0)."""
    kind = _kind(module)
    weight = module.weight_ih_l0
    model = TorchRNN(kind, module.input_size, module.hidden_size, module.num_layers,
                     module.bias, module.batch_first, module.dropout, module.bidirectional,
                     backend, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        for m, suffix in _modules(model):
            for name, value in _to_cell(kind, module, suffix, m).items():
                getattr(m, name).copy_(value)
    model.train(module.training)
    return model


def _modules(model: TorchRNN):
    """(RecModule, torch's weight suffix) for every layer and direction."""
    for i, layer in enumerate(model.stack.layers):
        if isinstance(layer, Bidirectional):
            yield layer.forward_layer, f"_l{i}"
            yield layer.backward_layer, f"_l{i}_reverse"
        else:
            yield layer, f"_l{i}"


def _to_cell(kind: str, module, suffix: str, m) -> dict:
    gates, N = SPECS[kind][1], module.hidden_size
    get = lambda name: getattr(module, name + suffix)
    W = get("weight_ih").reshape(m.W.shape)
    U = get("weight_hh").reshape(m.U.shape)
    weights = {"W": W, "U": U}
    if module.bias and kind == "gru":
        weights.update(bw=get("bias_ih").reshape(gates, N), bu=get("bias_hh").reshape(gates, N))
    elif module.bias:
        weights["b"] = (get("bias_ih") + get("bias_hh")).reshape(m.b.shape)
    return weights


def to_torch(model: nn.Module) -> nn.Module:
    """A torch.nn.LSTM, GRU or RNN with the weights of `model`: a `from_torch` model, or
    a Stack (or one layer) of the cells lstm, gru, elman or elman_relu (those of this
    module, or the catalogue's specs/lstm.rec, gru.rec, elman.rec). The result is
    checked: on a random batch it must give the model's outputs (else ValueError: a
    cell of that name with other equations)."""
    if not isinstance(model, TorchRNN):
        model = _wrap(model)
    cls = getattr(nn, SPECS[model.kind][0])
    extra = {"nonlinearity": "relu"} if model.kind == "elman_relu" else {}
    weight = model.stack.layers[0].parameters().__next__()
    rnn = cls(model.input_size, model.hidden_size, model.num_layers, bias=model.bias,
              batch_first=model.batch_first, dropout=model.stack.dropout.p,
              bidirectional=model.bidirectional, device=weight.device, dtype=weight.dtype,
              **extra)
    with torch.no_grad():
        for m, suffix in _modules(model):
            for name, value in _from_cell(model.kind, m).items():
                getattr(rnn, name + suffix).copy_(value)
    _verify(model, rnn)
    return rnn.train(model.training)


def _from_cell(kind: str, m) -> dict:
    weights = {"weight_ih": m.W.reshape(-1, m.W.shape[-1]),
               "weight_hh": m.U.reshape(-1, m.U.shape[-1])}
    if hasattr(m, "bw"):
        weights.update(bias_ih=m.bw.reshape(-1), bias_hh=m.bu.reshape(-1))
    elif hasattr(m, "b"):
        weights.update(bias_ih=m.b.reshape(-1), bias_hh=torch.zeros_like(m.b).reshape(-1))
    return weights


def _wrap(model: nn.Module) -> TorchRNN:
    """A Stack or one layer of torch's cells as a TorchRNN (time-major, as torch's
    default), sharing its modules."""
    stack = model if isinstance(model, Stack) else Stack(lambda i: model, 1)
    first = stack.layers[0]
    bidirectional = isinstance(first, Bidirectional)
    cell = first.forward_layer if bidirectional else first
    kind = getattr(getattr(cell, "ir", None), "name", None)
    if kind not in SPECS:
        raise TypeError(f"to_torch takes a model of the cells {', '.join(SPECS)} (torch's "
                        f"LSTM, GRU, RNN), got {kind or type(cell).__name__}")
    wrapped = TorchRNN.__new__(TorchRNN)
    nn.Module.__init__(wrapped)
    wrapped.kind, wrapped.stack, wrapped.batch_first = kind, stack, False
    wrapped.input_size, wrapped.hidden_size = cell.ir.hypers["D"], cell.ir.hypers["N"]
    wrapped.num_layers, wrapped.bidirectional = len(stack.layers), bidirectional
    wrapped.bias = hasattr(cell, "b") or hasattr(cell, "bw")
    return wrapped.train(model.training)


def _verify(model: TorchRNN, rnn: nn.Module) -> None:
    """The converted module against the model on a few random steps (eval mode: no
    dropout), so that a cell named like torch's but with other equations is refused."""
    weight = next(rnn.parameters())
    x = torch.randn(3, 2, model.input_size, dtype=weight.dtype, device=weight.device)
    if model.batch_first:
        x = x.transpose(0, 1)
    training = model.training
    with torch.no_grad():
        want, got = rnn.eval()(x)[0], model.eval()(x)[0]
    model.train(training)
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise ValueError(f"to_torch: the model's cell {model.kind} does not compute "
                         f"torch.nn.{SPECS[model.kind][0]}'s equations (max difference "
                         f"{(got - want).abs().max().item():.3g} on a random batch)")
