"""From a cell to a model: layers of compiled cells and torch.nn's RNNs as reclang models.

    stack = reclang.nn.Stack(cell, num_layers=2)          # layers of cell.module()
    bi = reclang.nn.Bidirectional(cell, merge="concat")   # a forward and a backward pass
    model = reclang.nn.from_torch(torch.nn.LSTM(8, 16))   # the same outputs and states
    lstm = reclang.nn.to_torch(model)                      # and back

docs/nn.md describes their calling and state conventions.
"""

from .layers import Bidirectional, Stack
from .torch_rnn import TorchRNN, from_torch, to_torch

__all__ = ["Bidirectional", "Stack", "TorchRNN", "from_torch", "to_torch"]
