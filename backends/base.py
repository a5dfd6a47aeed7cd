"""The backend protocol and the registry of backends.

A backend is a lowering of one or more canonical forms to generated source:

    kind                                the form it lowers: plan.form_of(kind)
    accepts(plan) -> Verdict            whether it runs the cell, and why (not)
    default_schedule(plan, device)      the schedule it uses unless told otherwise
    lower(plan, schedule) -> str        the generated source (forward and step)

`accepts` checks exactly the form object `lower` prints (an Unfit: its reason, with
the spec's file:line:col), plus the backend's own needs (packages; for kernels, a
Triton spelling and a derivative of every function: reclang/codegen/printable.py), so that a yes
always lowers (tests/test_verdicts.py runs `lower` for every yes of the catalogue and
of random cells).
Several backends may share a user-facing name (`triton` lowers diagonal, matrix and
nonlinear cells with three different kernels): the one whose forms hold the plan's
form answers for the name. Backends are registered in backends/__init__.py, in the
order `reclang inspect` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

from reclang.analysis.forms import Unfit
from reclang.schedule import LoopSchedule, Schedule


@dataclass(frozen=True)
class Verdict:
    backend: str
    supported: bool
    reason: str
    condition: str = ""   # what the backend checks at run time, unproven ("": nothing)


class Backend:
    """The protocol, with the checks every backend shares. A subclass sets `name` and
    `forms` (None: every cell), and may refuse a cell of its forms (`refusal`) or
    accept it under a condition checked at run time (`condition`)."""

    name: str = ""
    forms: tuple[str, ...] | None = None
    kind: str | None = None  # the form it lowers (None: the IR itself)
    schedules: type[Schedule] = LoopSchedule  # the type of its schedules

    def accepts(self, plan) -> Verdict:
        if self.forms is not None and plan.form not in self.forms:
            return Verdict(self.name, False, f"needs {' or '.join(self.forms)}; "
                           f"{plan.why_not()}")
        why = self.refusal(plan)
        if why:
            return Verdict(self.name, False, why)
        condition = self.condition(plan)
        reason = self.runs(plan) + (f" if {condition}" if condition else "")
        return Verdict(self.name, True, reason, condition)

    def runs(self, plan) -> str:
        return "runs every cell" if self.forms is None else f"runs {plan.form}"

    def form(self, plan):
        """The form object this backend lowers (None: it lowers the IR)."""
        return None if self.kind is None else plan.form_of(self.kind)

    def refusal(self, plan) -> str:
        """Why this backend cannot run a cell of its forms ("" when it can): by
        default, the Unfit in place of its form."""
        form = self.form(plan)
        return form.reason if isinstance(form, Unfit) else ""

    def condition(self, plan) -> str:
        """What the lowering checks on the inputs at run time, unproven ("": nothing)."""
        return ""

    def default_schedule(self, plan, device: str = "cpu") -> Schedule:
        return self.schedules()

    def lower(self, plan, schedule: Schedule) -> str:
        raise NotImplementedError(f"backend {self.name} has no lowering")


_REGISTRY: list[Backend] = []


def register(backend: Backend) -> Backend:
    _REGISTRY.append(backend)
    return backend


def names() -> tuple[str, ...]:
    """The user-facing backend names, in registration order."""
    return tuple(dict.fromkeys(b.name for b in _REGISTRY))


def claimant(plan, name: str) -> Backend | None:
    """The backend of that name whose forms hold the plan's form (else the first of
    that name, which refuses it; None for an unknown name)."""
    of_name = [b for b in _REGISTRY if b.name == name]
    for b in of_name:
        if b.forms is None or plan.form in b.forms:
            return b
    if len(of_name) > 1:  # the name's forms, all together, in its refusal
        return _Union(name, of_name)
    return of_name[0] if of_name else None


class _Union(Backend):
    """A name whose backends all refuse the form: one verdict naming all their forms."""

    def __init__(self, name: str, members: list[Backend]):
        self.name = name
        self.forms = tuple(f for b in members for f in b.forms)


def verdicts(plan) -> tuple[Verdict, ...]:
    return tuple(claimant(plan, name).accepts(plan) for name in names())
