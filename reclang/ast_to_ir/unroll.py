"""For blocks: `for r in R:` unrolled into R copies of its statements, before the IR
is built, so that every later stage sees plain statements.

In iteration k, the counter r is the number k (a value, or a constant subscript). A
name the block assigns is one SSA value per iteration: iteration k's is renamed
`name_k` (`name_k_m` inside a nested block; more `_` where the spec has such a name),
and the block's reads after the assignment, in this iteration and the next ones, read
that value. The last iteration keeps the spec's name: a let is then readable after the
block, and a state's update (`S <- ...`) there is the state's update of the step; the
earlier iterations' updates are lets of the state's shape. Unrolled statements keep
the spec's locations, so errors and the generated code's `# file:line:` comments point
into the block's body.
"""

from __future__ import annotations

import dataclasses

from .. import ast, config
from ..errors import Collector, RecError
from .hypers import _eval_scalar


class _Skip(Exception):
    """Abandons a statement (or a block) after its problem was recorded."""


def unroll(cell: ast.Cell, hypers: dict, errors: Collector) -> tuple[ast.Cell, set[str]]:
    """The cell with its for blocks unrolled, and the names of the statements dropped
    for a problem recorded in `errors`: the builder goes on with the rest, so that one
    load reports the problems of the blocks and of the other statements together."""
    if not any(isinstance(s, ast.For) for s in cell.body):
        return cell, set()
    unroller = _Unroller(cell, hypers, errors)
    body = unroller.statements(cell.body, {}, {}, (), True)
    return dataclasses.replace(cell, body=tuple(body)), unroller.dropped


class _Unroller:
    def __init__(self, cell: ast.Cell, hypers: dict, errors: Collector):
        self.hypers, self.errors = hypers, errors
        self.dropped: set[str] = set()  # names of the statements left out for an error
        self.shapes = {t.name: t.dims for s in cell.body if isinstance(s, ast.StateDecl)
                       for t in s.tensors}
        self.named = _names(cell, reads=False) | set(hypers)  # what a counter may not be
        self.taken = _names(cell, reads=True) | set(hypers)
        self.count = 0  # statements made so far

    def statements(self, body, values: dict, renamed: dict, suffix: tuple, last: bool):
        """The statements of `body` in iteration `suffix` of the enclosing blocks (values:
        counter -> its number; renamed: spec name -> the name its latest value has; last:
        whether every enclosing block is in its last iteration)."""
        out, once = [], set()  # once: the names this iteration assigned
        for s in body:
            try:
                if isinstance(s, ast.For):
                    out += self.block(s, values, renamed, suffix, last)
                elif isinstance(s, ast.Assign) and values:
                    out.append(self.assign(s, values, renamed, suffix, last, once))
                else:
                    out.append(s)
            except _Skip:  # its readers, and its state's completeness, report nothing more
                self.dropped |= {x.name for x in _flat([s]) if isinstance(x, ast.Assign)}
        return out

    def block(self, s: ast.For, values, renamed, suffix, last):
        count = self.iterations(s)
        var = s.var.name
        if var in values or var in self.named:
            self.fail(f"the counter {var} of this for block already names "
                      f"{'an enclosing counter' if var in values else 'a value'}: pick "
                      "another name", s.var.loc)
        out = []
        for k in range(count):
            out += self.statements(s.body, {**values, var: k}, renamed, suffix + (k,),
                                   last and k == count - 1)
        return out

    def iterations(self, s: ast.For) -> int:
        names = [e.name for e in ast.walk(s.count) if isinstance(e, ast.Name)
                 and e.name not in self.hypers]
        if names:
            self.fail(f"`for {s.var.name} in ...` counts to a hyperparameter or a constant "
                      f"integer; {names[0]} is not one (the count must be known when the "
                      "cell is loaded)", s.count.loc)
        try:
            count = _eval_scalar(s.count, self.hypers, "the count of a for block")
        except RecError as err:
            self.fail(err.message, err.loc or s.count.loc)
        if isinstance(count, float) and count.is_integer():
            count = int(count)  # as a dimension takes 4.0
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            self.fail(f"a for block runs a positive integer number of times; {count!r} is "
                      "not one", s.count.loc)
        return count

    def assign(self, s: ast.Assign, values, renamed, suffix, last, once) -> ast.Assign:
        self.count += 1
        if self.count > config.UNROLLED:  # stops at once: the next iterations would too
            raise RecError(f"the for blocks unroll into more than {config.UNROLLED} "
                           "statements", self.errors.source, s.loc)
        if s.kind == "out":
            self.fail("an output is written once per step, so not inside a for block: "
                      "write it after the block (a let of the block's last iteration keeps "
                      "its name there)", s.loc)
        for index in s.indices:
            if index.name in values:
                self.fail(f"{index.name} is the for block's counter, a number in each "
                          "iteration; the left side names indices only (read a row with "
                          f"x[{index.name}, ...] on the right)", index.loc)
        if s.name in values:
            self.fail(f"{s.name} is the for block's counter and cannot be assigned", s.loc)
        if s.name in once:
            self.fail(f"{s.name} is assigned twice in one iteration of the for block", s.loc)
        once.add(s.name)
        value = _substitute(s.value, values, renamed)
        if last:
            renamed.pop(s.name, None)
            return dataclasses.replace(s, value=value)
        name = self.fresh(s.name, suffix)
        renamed[s.name] = name
        if s.kind == "update" and s.name in self.shapes:  # an intermediate state: a let
            dims = self.shapes[s.name]
            indices = tuple(dataclasses.replace(i, size=d.size) if i.size is None else i
                            for i, d in zip(s.indices, dims)) + s.indices[len(dims):]
            return ast.Assign("let", name, indices, value, s.loc)
        return dataclasses.replace(s, name=name, value=value)

    def fresh(self, name: str, suffix: tuple) -> str:
        stem = "_".join(map(str, suffix))
        while f"{name}_{stem}" in self.taken:
            name += "_"
        self.taken.add(f"{name}_{stem}")
        return f"{name}_{stem}"

    def fail(self, message, loc):
        self.errors.error(message, loc)
        raise _Skip


def _substitute(e: ast.Expr, values: dict, renamed: dict) -> ast.Expr:
    """e with each counter replaced by its number and each renamed value by its name."""
    if isinstance(e, ast.Name):
        if e.name in values:
            return ast.Num(values[e.name], e.loc)
        return ast.Name(renamed.get(e.name, e.name), e.loc)
    if isinstance(e, ast.Subscript):
        return ast.Subscript(renamed.get(e.name, e.name),
                             tuple(_substitute(i, values, renamed) for i in e.indices), e.loc)
    if isinstance(e, ast.Reduce):
        bound = {b.name for b in e.binders}
        return dataclasses.replace(e, body=_substitute(e.body, _without(values, bound),
                                                       _without(renamed, bound)))
    if isinstance(e, ast.Call):
        return dataclasses.replace(e, args=tuple(_substitute(a, values, renamed)
                                                 for a in e.args))
    if isinstance(e, ast.Unary):
        return dataclasses.replace(e, operand=_substitute(e.operand, values, renamed))
    if isinstance(e, ast.Binary):
        return dataclasses.replace(e, left=_substitute(e.left, values, renamed),
                                   right=_substitute(e.right, values, renamed))
    return e


def _without(names: dict, bound: set) -> dict:
    """A reduction's own indices are not the counters or values of the same names."""
    return {k: v for k, v in names.items() if k not in bound}


def _names(cell: ast.Cell, reads: bool) -> set[str]:
    """The names the spec declares and assigns, and with `reads` those it reads."""
    names = set()
    for s in _flat(cell.body):
        if isinstance(s, ast.Assign):
            names.add(s.name)
            if reads:
                names |= {e.name for e in ast.walk(s.value)
                          if isinstance(e, (ast.Name, ast.Subscript))}
        elif isinstance(s, (ast.InputDecl, ast.ParamDecl, ast.StateDecl)):
            names |= {t.name for t in s.tensors}
    return names


def _flat(body):
    for s in body:
        if isinstance(s, ast.For):
            yield from _flat(s.body)
        else:
            yield s
