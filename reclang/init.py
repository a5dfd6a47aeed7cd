"""Evaluating initializers of params and states.

An initializer is an expression of numbers, hyperparameters, params, the
declaration's own index names and the built-in functions, plus `uniform(a, b)`,
`normal(mean, std)` (draws of the declared shape) and `arange(n)`. Whole tensors
broadcast as in torch (trailing axes align); an index name `i` in `W[i: N, j: M]`
is 0..N-1 along its own axis.
"""

from __future__ import annotations

import torch

from . import ast
from .errors import RecError
from .functions import BINARY_OPS, CONSTANTS, FUNCTIONS
from .ir import IR, Decl
from .rewrite import fold


def evaluate(ir: IR, decl: Decl, params: dict[str, torch.Tensor], dtype=torch.float32,
             device=None) -> torch.Tensor:
    """The initial value of `decl`, a tensor of its declared shape."""
    if decl.init is None:
        value = torch.zeros(decl.shape, dtype=dtype, device=device)
    else:
        env = _Env(ir, decl, params, dtype, device)
        value = env.eval(decl.init)
    if not torch.is_tensor(value):  # a number: made a tensor in `dtype`, not the default one
        value = torch.tensor(value, **_kw_for(value, {"dtype": dtype, "device": device}))
    if decl.dtype == "complex":
        value = value.to(torch.promote_types(dtype, torch.complex64))
    elif value.is_complex():
        raise RecError(f"the initializer of {decl.name} is complex but {decl.name} is real",
                       ir.source, decl.init.loc)
    else:
        value = value.to(dtype)
    try:
        return torch.broadcast_to(value, decl.shape).clone()
    except RuntimeError:
        raise RecError(f"the initializer of {decl.name} has shape {list(value.shape)}, which "
                       f"does not broadcast to {list(decl.shape)}", ir.source,
                       decl.init.loc) from None


class _Env:
    def __init__(self, ir, decl, params, dtype, device):
        self.ir, self.decl, self.params = ir, decl, params
        self.dtype, self.device = dtype, device
        rank = len(decl.shape)
        self.indices = {}
        for k, dim in enumerate(decl.dims):
            if dim.index:
                view = [1] * rank
                view[k] = decl.shape[k]
                self.indices[dim.index] = torch.arange(decl.shape[k], dtype=dtype,
                                                       device=device).view(view)

    def eval(self, e: ast.Expr):
        if isinstance(e, ast.Num):
            return e.value
        if isinstance(e, ast.Imag):
            return complex(0, e.value)
        if isinstance(e, ast.Name):
            if e.name in self.indices:
                return self.indices[e.name]
            if e.name in self.ir.hypers:
                return self.ir.hypers[e.name]
            if e.name in CONSTANTS:
                return CONSTANTS[e.name]
            if e.name in self.params:
                return self.params[e.name]
            raise RecError(f"'{e.name}' is not known in this initializer (params are "
                           "initialized in the order they are declared)", self.ir.source, e.loc)
        if isinstance(e, ast.Unary):
            return self.apply(FUNCTIONS["neg"], [self.eval(e.operand)], e.loc)
        if isinstance(e, ast.Binary):
            # the operators' folds are Python operators: they work on tensors too
            return self.apply(FUNCTIONS[BINARY_OPS[e.op]], [self.eval(e.left),
                                                            self.eval(e.right)], e.loc)
        if isinstance(e, ast.Call):
            return self.call(e)
        raise RecError("this expression is not allowed in an initializer", self.ir.source,
                       e.loc)

    def apply(self, fn, args, loc):
        """`fn` on tensors, or folded as the checks fold constants (a RecError for
        `0 ** -0.5`, not a ZeroDivisionError)."""
        if any(torch.is_tensor(a) for a in args):
            return fn.fold(*args)
        try:
            return fold(fn, args, loc)
        except RecError as err:
            raise RecError(err.diagnostics, self.ir.source) from None

    def call(self, e: ast.Call):
        args = [self.eval(a) for a in e.args]
        shape, kw = self.decl.shape, {"dtype": self.dtype, "device": self.device}
        if e.fn == "uniform":
            low, high = args
            return torch.rand(shape, **kw) * (high - low) + low
        if e.fn == "normal":
            mean, std = args
            return torch.randn(shape, **kw) * std + mean
        if e.fn == "arange":
            return torch.arange(self._arange_length(args[0], e.loc), **kw)
        fn = FUNCTIONS[e.fn]
        if not any(torch.is_tensor(a) for a in args):
            return self.apply(fn, args, e.loc)
        tensors = [a if torch.is_tensor(a) else torch.tensor(a, **_kw_for(a, kw)) for a in args]
        names = {f"{{{k}}}": f"tensors[{k}]" for k in range(len(args))}
        code = fn.torch
        for placeholder, name in names.items():
            code = code.replace(placeholder, name)
        return eval(code, {"torch": torch, "tensors": tensors})  # the table's own templates


    def _arange_length(self, n, loc) -> int:
        """arange(n) must fit an axis of the declaration: it is allocated before it
        broadcasts."""
        longest = max(self.decl.shape, default=1)
        if torch.is_tensor(n) or isinstance(n, complex) or n != int(n) or not 1 <= n <= longest:
            raise RecError(f"arange(n) takes an integer n from 1 to {longest} (the longest axis "
                           f"of {self.decl.name}), got {n!r}", self.ir.source, loc)
        return int(n)


def _kw_for(value, kw):
    if isinstance(value, complex):
        return {"dtype": torch.promote_types(kw["dtype"], torch.complex64),
                "device": kw["device"]}
    return kw
