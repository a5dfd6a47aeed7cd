"""Indices: a statement's left-hand side, and the size of every index it binds, from
the tensors the index subscripts."""

from __future__ import annotations

from .. import ast
from ..errors import Loc
from ..functions import NORMALIZATIONS
from .common import RESERVED, _a, _axes


class Indices:
    """The part of the Builder that scopes indices (see builder.py for its state)."""

    def _target_scope(self, s: ast.Assign) -> dict[str, int]:
        """Checks the left-hand side and returns the sizes of its indices."""
        decl = self.decls.get(s.name)
        if s.kind == "update":
            self._check_update_target(s, decl)
        elif decl is not None and decl.kind == "state":
            self.fail(f"{s.name} is a state: update it with `<-`, not `=`", s.loc)
        elif decl is not None:
            self.fail(f"{s.name} is {_a(decl.kind)}: {decl.kind}s cannot be assigned", s.loc)
        elif s.name in self.defined:
            first = self.node(self.defined[s.name]).loc
            self.fail(f"{s.name} is already defined at line {first.line}; "
                      "each name is assigned once", s.loc)
        elif s.name in self.hypers or s.name in RESERVED:
            self.fail(f"'{s.name}' is a hyperparameter or built-in and cannot be assigned", s.loc)
        names = [i.name for i in s.indices]
        scope: dict[str, int] = {}
        for k, index in enumerate(s.indices):
            if index.name in names[:k]:
                self.fail(f"index {index.name} appears twice on the left", index.loc)
            self._check_index_name(index.name, index.loc)
            size = None
            if index.size is not None:
                size = self._dim_size(ast.Dim(index.size, None, index.loc))
            if s.kind == "update":
                declared = decl.shape[k]
                if size is not None and size != declared:
                    self.fail(f"{index.name} has size {size} but axis {k} of {s.name} "
                              f"has size {declared}", index.loc)
                size = declared
            if size is None:
                size = self._infer_size(index.name, s.value, index.loc)
            scope[index.name] = size
        return scope

    def _check_update_target(self, s, decl):
        if decl is None:
            self.fail(f"{s.name} is not a declared state: declare it with "
                      f"`state {s.name}[...] = 0` to update it with `<-`", s.loc)
        if decl.kind != "state":
            self.fail(f"only states are updated with `<-`; {s.name} is {_a(decl.kind)}", s.loc)
        if s.name in self.updated:
            first = self.node(self.updated[s.name]).loc
            self.fail(f"state {s.name} is updated twice (first at line {first.line}); "
                      "a state has one update per step (one per iteration of a for block)",
                      s.loc)
        if len(s.indices) != len(decl.shape):
            self.fail(f"{s.name} has {_axes(len(decl.shape))} but {len(s.indices)} "
                      f"{'index is' if len(s.indices) == 1 else 'indices are'} given", s.loc)

    def _check_index_name(self, name, loc):
        if name in self.hypers or name in self.decls or name in self.defined:
            self.fail(f"index {name} has the same name as a hyperparameter or tensor; "
                      "rename the index", loc)

    def _infer_size(self, index: str, expr: ast.Expr, loc: Loc, reduced=False) -> int:
        """The size of an index from the tensors it subscripts in `expr`."""
        found = self._subscript_sizes(index, expr)
        rebound = any(_rebinds(e, index) for e in ast.walk(expr))
        unknown = any(isinstance(e, ast.Subscript) and self._shape_of(e.name) is None and
                      any(isinstance(s, ast.Name) and s.name == index for s in e.indices)
                      for e in ast.walk(expr))
        if not found and (rebound or unknown):
            return 1  # the rebinding reduction, or the unknown tensor, reports the problem
        if not found:
            used = any(isinstance(e, ast.Name) and e.name == index for e in ast.walk(expr))
            if reduced and not used:
                message = f"index {index} is reduced but not used in the reduction's body"
            elif _in_index_expression(index, expr):
                message = (f"index {index} appears only in subscript expressions, which do "
                           f"not give its size: give it as `{index}: N`")
            elif used:
                message = (f"cannot tell the size of index {index}: use it as a subscript "
                           f"of a tensor on the right, or give it as `{index}: N`")
            else:
                message = (f"index {index} is not used on the right, so its size is unknown: "
                           f"give it as `{index}: N`")
            self.errors.error(message, loc)
            return 1  # go on, to find the statement's other problems
        size, where, _ = found[0]
        for other, oloc, what in found[1:]:
            if other != size:
                self.fail(f"index {index} ranges over {other} in {what}, but over {size} "
                          f"at line {where.line}, column {where.col}", oloc)
        return size

    def _subscript_sizes(self, index, expr) -> list[tuple[int, Loc, str]]:
        found = []
        if _rebinds(expr, index):
            return found  # rebound inside: a different index
        if isinstance(expr, ast.Subscript):
            shape = self._shape_of(expr.name)
            for k, sub in enumerate(expr.indices):
                if isinstance(sub, ast.Name) and sub.name == index and shape is not None \
                        and k < len(shape):
                    found.append((shape[k], sub.loc, f"{expr.name} (axis {k})"))
        for child in ast.children(expr):
            found += self._subscript_sizes(index, child)
        return found

    def _shape_of(self, name):
        if name in self.decls:
            return self.decls[name].shape
        if name in self.defined:
            return self.node(self.defined[name]).sizes
        return None


def _in_index_expression(index: str, expr: ast.Expr) -> bool:
    """Whether `index` is read inside a subscript that is more than a name."""
    return any(isinstance(e, ast.Subscript) and any(
        not isinstance(sub, ast.Name) and any(isinstance(x, ast.Name) and x.name == index
                                              for x in ast.walk(sub)) for sub in e.indices)
        for e in ast.walk(expr))


def _rebinds(e: ast.Expr, index: str) -> bool:
    """Whether e is a reduction that binds its own `index` (softmax(i: ...) normalizes
    along the enclosing i: it binds none)."""
    return isinstance(e, ast.Reduce) and e.fn not in NORMALIZATIONS and \
        any(b.name == index for b in e.binders)
