"""A rank's summary of its slice of the sequences: the slice's transition and its state
contribution from a zero initial state, per state and per sequence.

An affine recurrence S' = A_t S + b_t takes a slice of T_r steps from S to Φ S + c with
Φ = A_{T_r} ⋯ A_1 and c the final state from S = 0. c is the module's own run from zero
states (its backend). Φ is built from the per-token transitions A_t, which are exact
derivatives: the forward-mode derivative (`torch.func.jvp`) of the module's one-step form
in the state, evaluated on every token at once. No subtraction is involved (Φ·e is not
found as (Φ·e + c) - c, which loses every digit of Φ·e where |c| ≫ |Φ·e|).

    layout        Φ per sequence                       combined by
    elementwise   a decay over the axes it varies      a product over time
                  along (1 elsewhere: diag, diag-lti,
                  mat-decay, e.g. one per key row)
    matrix        a K x K matrix per shared index      a tree of matrix products
                  (dplr: the low rank mixes the key
                  axis; the same for every value)

Cost per rank: one step over all B·T_r tokens, ⌈K / V⌉ for a dplr state, and the
products (T_r·K³ per head for dplr); the steps run `block` tokens of each sequence at a
time and are recomputed in the backward, so that what a rank holds for the summary is
B·block step states and one Φ per block, not B·T_r states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.func import jvp
from torch.utils.checkpoint import checkpoint

from ..analysis.forms import Unfit
from ..errors import NOWHERE, RecError

SPLITTABLE = ("diag", "diag-lti", "mat-decay", "dplr")


@dataclass(frozen=True)
class Layout:
    """How one state's slice transition is held. `dims`: the state's [*dims]; `varies`:
    per dim, whether an elementwise decay varies along it; `order`: for a matrix
    transition, the dims as (shared..., key, value...) and how many are shared."""

    name: str
    dims: tuple[int, ...]
    varies: tuple[bool, ...] = ()
    order: tuple[int, ...] = ()
    shared: int = 0

    @property
    def matrix(self) -> bool:
        return bool(self.order)

    @property
    def key(self) -> int:
        return self.dims[self.order[self.shared]]

    @property
    def columns(self) -> int:
        return math.prod(self.dims[d] for d in self.order[self.shared + 1:])

    def as_matrix(self, s: torch.Tensor) -> torch.Tensor:
        """[N, *dims] -> [N, shared, K, columns]."""
        lead = math.prod(self.dims[d] for d in self.order[:self.shared])
        moved = s.permute(0, *(d + 1 for d in self.order))
        return moved.reshape(s.shape[0], lead, self.key, self.columns)

    def from_matrix(self, s: torch.Tensor) -> torch.Tensor:
        """The inverse of as_matrix."""
        moved = s.reshape(s.shape[0], *(self.dims[d] for d in self.order))
        inverse = sorted(range(len(self.order)), key=lambda i: self.order[i])
        return moved.permute(0, *(i + 1 for i in inverse))

    def apply(self, phi: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Φ S for states [N, *dims]."""
        if not self.matrix:
            return phi * s
        return self.from_matrix(phi @ self.as_matrix(s))

    def apply_transition(self, later: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
        """The transition of two consecutive spans."""
        return later @ earlier if self.matrix else later * earlier


def layouts(cell_plan) -> tuple[Layout, ...]:
    """Every state's layout, or a RecError naming the plan when the cell cannot be split
    into slices with a summary each."""
    form = cell_plan.form
    if form not in SPLITTABLE:
        raise _unsplittable(cell_plan)
    matrix = cell_plan.form_of("matrix") if form == "dplr" else None
    if isinstance(matrix, Unfit):
        raise _unsplittable(cell_plan, str(matrix))
    out = []
    for s in cell_plan.states:
        dims = tuple(next(d.shape for d in cell_plan.ir.states if d.name == s.name))
        if s.transition.kind == "dplr":
            chunk = next(c for c in matrix.states if c.name == s.name)
            names = (*chunk.shared, *chunk.key, *chunk.value)
            out.append(Layout(s.name, dims, order=tuple(s.axes.index(a) for a in names),
                              shared=len(chunk.shared)))
        else:
            varies = tuple(a in s.transition.decay_axes for a in s.axes)
            out.append(Layout(s.name, dims, varies=varies))
    return tuple(out)


def _unsplittable(cell_plan, detail: str = "") -> RecError:
    culprit = next((s for s in cell_plan.states if not s.affine),
                   next((s for s in cell_plan.states if s.coupled_with),
                        cell_plan.states[0] if cell_plan.states else None))
    why = detail or cell_plan.why_not()
    needs = {"nonlinear": "a nonlinear cell would need a Newton solve across ranks",
             "coupled": "coupled states would need their joint transition as the summary",
             "associative": "an associative cell would need its monoid's summary"}
    return RecError(
        f"cell {cell_plan.cell} cannot be split across ranks: its plan is {cell_plan.form} "
        f"({why}); sequence parallelism needs a diag, diag-lti, mat-decay or dplr plan"
        + (f" ({needs[cell_plan.form]})" if cell_plan.form in needs else ""),
        cell_plan.ir.source, culprit.loc if culprit is not None else NOWHERE)


def token_transitions(m, inputs: dict, lays, dtype) -> dict:
    """Each state's per-token transition A_t, [B, T, *Φ dims], as the derivative of the
    module's step in the state (forward mode, on all tokens at once)."""
    first = next(iter(inputs.values()))
    lead = first.shape[:2]
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in inputs.items()}
    zero = {k: torch.zeros_like(v) for k, v in m.initial_state(
        lead.numel(), dtype, first.device).items()}

    def final(state):
        return m.step(**flat, state=state)[1]

    out = {}
    passes = max((-(-lay.key // lay.columns) for lay in lays if lay.matrix), default=1)
    columns = [[] for _ in lays]
    for block in range(passes):  # block of key columns
        tangent = {lay.name: _tangent(lay, zero[lay.name], block) for lay in lays}
        derivative = jvp(final, (zero,), (tangent,))[1]
        for i, lay in enumerate(lays):
            d = derivative[lay.name]
            if lay.matrix:
                columns[i].append(lay.as_matrix(d))
            elif block == 0:
                index = [slice(None) if v else slice(0, 1) for v in lay.varies]
                out[lay.name] = d[(slice(None), *index)]
    for i, lay in enumerate(lays):
        if lay.matrix:  # the columns of A_t, block by block, cut to K
            out[lay.name] = torch.cat(columns[i], -1)[..., :lay.key]
    return {k: v.reshape(*lead, *v.shape[1:]) for k, v in out.items()}


def _tangent(lay: Layout, zero: torch.Tensor, block: int) -> torch.Tensor:
    """Ones for an elementwise state; for a matrix one, the basis vectors e_l of the key
    axis for l in this block, one per value column (column j: l = block·columns + j)."""
    if not lay.matrix:
        return torch.ones_like(zero)
    e = torch.zeros_like(lay.as_matrix(zero))
    for j in range(lay.columns):
        if block * lay.columns + j < lay.key:
            e[:, :, block * lay.columns + j, j] = 1
    return lay.from_matrix(e)


def product(lay: Layout, steps: torch.Tensor) -> torch.Tensor:
    """The transition of consecutive steps [B, T, *Φ dims] (the first step first)."""
    if not lay.matrix:
        return steps.prod(1)
    while steps.shape[1] > 1:  # pairs (later @ earlier), an odd last one carried over
        even = steps.shape[1] // 2 * 2
        steps = torch.cat([steps[:, 1:even:2] @ steps[:, 0:even:2], steps[:, even:]], 1)
    return steps[:, 0]


def transition(m, inputs: dict, lays, dtype, block: int) -> list[torch.Tensor]:
    """Each state's transition over the inputs' T steps, [B, *Φ dims]: the product of
    the per-token ones, `block` steps at a time; a block's step (its states over
    B·block tokens) is recomputed for the backward rather than kept."""
    total = None
    for t0 in range(0, next(iter(inputs.values())).shape[1], block):
        part = {k: v[:, t0:t0 + block] for k, v in inputs.items()}
        later = checkpoint(_block, m, part, lays, dtype, use_reentrant=False)
        total = later if total is None else [
            lay.apply_transition(a, b) for lay, a, b in zip(lays, later, total)]
    return total


def _block(m, part: dict, lays, dtype) -> tuple[torch.Tensor, ...]:
    steps = token_transitions(m, part, lays, dtype)
    return tuple(product(lay, steps[lay.name]) for lay in lays)
