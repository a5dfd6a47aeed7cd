"""Declarations: the names, shapes and initializers of inputs, params and states."""

from __future__ import annotations

import math

from .. import ast, config
from ..errors import RecError
from ..functions import CALLABLE, CONSTANTS, FUNCTIONS, INIT_ONLY, REDUCTIONS
from ..ir import Decl, Op
from .common import KEYWORDS, RESERVED, _a, _axes, _suggest
from .hypers import _eval_scalar


class Declarations:
    """The part of the Builder that declares tensors (see builder.py for its state)."""

    def _check_new_name(self, name, loc, what) -> bool:
        if name in RESERVED:
            kind = "keyword" if name in KEYWORDS else "built-in function"
            self.errors.error(f"'{name}' is a {kind} and cannot name {_a(what)}", loc)
            return False
        if name in self.hypers and what != "hyperparameter":
            self.errors.error(f"'{name}' is already a hyperparameter", loc)
            return False
        if name in self.decls:
            first = self.decls[name]
            self.errors.error(f"'{name}' is already declared as {_a(first.kind)} "
                              f"at line {first.loc.line}", loc)
            return False
        return True

    def declare(self, stmt):
        kind = {ast.InputDecl: "input", ast.ParamDecl: "param", ast.StateDecl: "state"}[type(stmt)]
        inits = getattr(stmt, "inits", [None] * len(stmt.tensors))
        for t, init in zip(stmt.tensors, inits):
            random = isinstance(init, ast.Init) and init.random
            init = init.value if isinstance(init, ast.Init) else init
            if not self._check_new_name(t.name, t.loc, kind):
                continue
            shape = self._shape(t)
            if kind == "param" and init is None:
                self.errors.error(f"param {t.name} needs an initializer: `= value` or "
                                  "`~ normal(0, 0.02)`", t.loc)
            if kind == "input" and t.dtype == "complex":
                self.errors.error("inputs are real; make a complex value in the cell "
                                  "with complex(re, im)", t.loc)
            decl = Decl(t.name, kind, shape, t.dtype, t.loc, t.dims, init, random)
            self.decls[t.name] = decl
            if init is not None:
                self._check_init(init, decl)
            op = {"input": Op.INPUT, "param": Op.PARAM, "state": Op.STATE}[kind]
            axes = tuple(f"#{k}" for k in range(len(shape)))
            self.leaves[t.name] = self.add(op, (), axes, shape, t.dtype, t.name, t.loc)

    def _shape(self, t: ast.TensorDecl) -> tuple[int, ...]:
        shape = tuple(self._dim_size(d) for d in t.dims)
        if len(shape) > config.INDICES or math.prod(shape) > config.ELEMENTS:
            self.errors.error(f"{t.name} has {_axes(len(shape))} and {math.prod(shape):,} "
                              f"elements; a tensor has at most {config.INDICES} axes and "
                              f"{config.ELEMENTS:,} elements", t.loc)
            return (1,) * min(len(shape), config.INDICES)
        return shape

    def _dim_size(self, dim: ast.Dim) -> int:
        try:
            value = _eval_scalar(dim.size, self.hypers, "a dimension")
        except RecError as err:
            self.errors.error(err.message, err.loc)
            return 1
        if not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())) \
                or value < 1:
            self.errors.error(f"a dimension must be a positive integer, got {value!r}", dim.loc)
            return 1
        return int(value)

    def _check_init(self, expr: ast.Expr, decl: Decl):
        """Initializers use numbers, hyperparameters, params, the declaration's own
        index names, elementwise functions and uniform / normal / arange."""
        indices = {d.index for d in decl.dims if d.index}
        for e in ast.walk(expr):
            if isinstance(e, ast.Name) and e.name not in self.hypers | dict.fromkeys(indices) \
                    and e.name not in CONSTANTS:
                other = self.decls.get(e.name)
                if other is None or other.kind != "param":
                    what = f"{other.kind} " if other else ""
                    self.errors.error(f"an initializer may use numbers, hyperparameters, "
                                      f"params and its own index names, not {what}"
                                      f"'{e.name}'", e.loc)
            elif isinstance(e, ast.Subscript):
                self.errors.error("an initializer reads whole tensors (they broadcast like "
                                  f"torch); write '{e.name}' without subscripts", e.loc)
            elif isinstance(e, ast.Call) and e.fn not in CALLABLE | set(INIT_ONLY):
                self._unknown_function(e)
            elif isinstance(e, ast.Call):
                n = INIT_ONLY[e.fn] if e.fn in INIT_ONLY else FUNCTIONS[e.fn].arity
                if len(e.args) != n:
                    self.errors.error(f"{e.fn}() takes {n} argument{'s' * (n != 1)}, "
                                      f"got {len(e.args)}", e.loc)
            elif isinstance(e, ast.Reduce):
                self.errors.error("reductions are not allowed in initializers", e.loc)
            elif isinstance(e, ast.Imag) and decl.dtype != "complex":
                self.errors.error(f"{decl.name} is real; declare it `{decl.name}[...]: complex` "
                                  "to give it a complex value", e.loc)

    def _unknown_function(self, e: ast.Call):
        if e.fn in self.decls or e.fn in self.defined:
            self.errors.error(f"'{e.fn}' is a tensor, not a function: index it with "
                              f"{e.fn}[...]", e.loc)
            return
        hint = _suggest(e.fn, CALLABLE | set(REDUCTIONS))
        self.errors.error(f"unknown function '{e.fn}'{hint}", e.loc)
