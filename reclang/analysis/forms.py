"""The canonical forms a cell's recurrence may take, as the values a lowering consumes.

Each form holds everything a backend needs to print its program; a cell that does not
take a form gets an `Unfit` instead, with the reason and where in the spec it shows.
reclang/analysis/ir_to_forms.py builds them (each at most once per cell, memoized on the
plan: `plan.form_of(kind)`), and a backend's verdict checks the very object its lowering
prints.

    kind      form          lowered by
    diag      Diag          the scan, the FFT (lti), the triton diagonal scan
    dense     Dense         the scan (its dense variant)
    gated     GatedDiag     the triton gated scan (gates computed in the kernel)
    matrix    MatState      the chunk backend, the triton matrix kernels
    lanes     Lanes         the triton fused loop
The sequential loop runs every cell from the IR itself; the associative and coupled
forms have no lowering of their own yet (they run on it), so no object either.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass

import sympy

from .lanes import LaneForm
from .operands import MatState  # noqa: F401  (a form: defined where it is derived)


@dataclass(frozen=True)
class Unfit:
    """The cell does not take the form: `reason` a user can act on, starting with the
    `file:line:col` of the spec where it shows (`loc`, "" only for a missing package)."""

    reason: str
    loc: str = ""

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class DiagState:
    """One state of h' = a ⊙ h + b: the analyzer's affine normal form, over the state's
    axes as integer symbols (`mix_axes`: those a dense transition mixes, else ())."""

    name: str
    axes: tuple[str, ...]
    a: sympy.Expr               # the diagonal coefficient (the decay)
    b: sympy.Expr               # the input term
    lti: bool                   # `a` is constant in time
    mix_axes: tuple[str, ...] = ()
    mix_dims: tuple[int, ...] = ()  # those axes' dims in the state's [B, ...] layout


@dataclass(frozen=True)
class Diag:
    """Every state updated elementwise, h' = a ⊙ h + b (`printable`: a and b can be
    printed from the normal form; else the step evaluated on all tokens gives them)."""

    states: tuple[DiagState, ...]
    printable: bool = True

    @property
    def lti(self) -> bool:
        return all(s.lti for s in self.states)


@dataclass(frozen=True)
class Dense:
    """h' = A h + b with A mixing some axes of some states (the others elementwise)."""

    states: tuple[DiagState, ...]
    printable = False  # the mixing: found from the step on all tokens


@dataclass(frozen=True)
class GatedDiag:
    """A diagonal cell of one state in the lane form with its gates inside: a and b are
    the cell's own equations of the operands o0.. (time-varying) and constants c0..
    (params alone), which a kernel computes tile by tile."""

    lanes: LaneForm
    a: sympy.Expr
    b: sympy.Expr

    def expressions(self) -> tuple[sympy.Expr, ...]:
        """What a kernel prints (and differentiates)."""
        return (self.a, self.b)


@dataclass(frozen=True)
class Lanes:
    """A cell whose step a fused kernel runs unit by unit: the lane form with its gates
    inside and the operands that are only ever added together merged into one."""

    lanes: LaneForm

    def expressions(self) -> tuple[sympy.Expr, ...]:
        """What the kernel prints (and differentiates): the updates and outputs."""
        return (*self.lanes.updates.values(), *self.lanes.outputs.values())


def describe(form) -> list[str]:
    """A form as indented lines, as `reclang inspect --backend` prints it: its type, then
    a field a line (forms and other records within it, and tuples of them, nested)."""
    if not (is_dataclass(form) and not isinstance(form, type)):
        return [str(form)]
    lines = [type(form).__name__]
    for f in fields(form):
        value = getattr(form, f.name)
        items = value if isinstance(value, (tuple, list)) else (value,)
        if items and all(is_dataclass(x) for x in items):
            lines.append(f"  {f.name}:")
            lines += ["    " + line for x in items for line in describe(x)]
        elif isinstance(value, dict) and value:
            lines.append(f"  {f.name}:")
            lines += [f"    {k}: {v}" for k, v in value.items()]
        else:
            lines.append(f"  {f.name}: {value}")
    return lines
