"""reclang: a declarative language for recurrent cells, compiled to PyTorch.

    import reclang
    cell = reclang.load("specs/gla.rec", H=4, K=64, V=64)
    m = cell.module(backend="sequential")
    y, state = m(q=q, k=k, v=v, g=g)
"""

from .config import VERSION as __version__  # noqa: E402
from .compile import Cell, load, loads  # noqa: E402
from .errors import RecError  # noqa: E402
from .module import RecModule  # noqa: E402
from . import nn  # noqa: E402  (reclang.nn.Stack, ... after `import reclang`)

__all__ = ["Cell", "RecError", "RecModule", "load", "loads", "nn", "__version__"]
