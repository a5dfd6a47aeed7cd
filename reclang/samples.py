"""Random inputs for `reclang run` and `reclang bench`: normal samples of a given scale,
except for the inputs the plan proves to be gates of a state's decay, which are drawn
in the range the cell expects, as flash-linear-attention's tests draw them:

- a log decay, the decay exp(c·g) of an input g with c > 0 (GLA, HGRN, RWKV-6/7, Gated
  DeltaNet): g ≤ 0, as logsigmoid of a normal sample (c < 0: g ≥ 0, its negation);
- a gate that is the decay itself, g or 1 − g (Titans' η and α): g in (0, 1), as the
  sigmoid of a normal sample;
- the key of a delta rule, an input k in both vectors of a low-rank term −β k kᵀ
  (DeltaNet, Gated DeltaNet, Titans): k of unit norm along the summed axis, as fla's
  L2-normalized keys, and the factors of the term read without that axis, such as β, in
  (0, 1), so that I − β k kᵀ contracts;
- a low-rank term b aᵀ of two inputs of one shape (RWKV-7's "in-context learning rate"
  pair): a of unit norm and b = −a ⊙ u with u in (0, 1), as fla's tests build RWKV-7's
  a = −k̂ and b = k̂ ⊙ u from one normalized key, so that I + b aᵀ contracts too.

A normal log gate above 0 grows the state by e^g at every step: GLA at T = 64 reached
1e13 on such inputs, DeltaNet's normal keys overflowed to nan by T = 1024. Every other
input stays normal; a cell whose low-rank vectors are intermediates (KDA's, DeltaProduct's) gets
normal keys and can diverge, which the caller reports when the outputs are not finite."""

from __future__ import annotations

import sympy
import torch


def random_inputs(cell, batch: int, T: int, scale: float = 1.0, **like) -> dict:
    """{input name: a [batch, T, *shape] tensor}; `like`: dtype and device for randn."""
    kinds = gate_kinds(cell.plan)
    out = {}
    for d in cell.ir.inputs:
        x = scale * torch.randn(batch, T, *d.shape, **like)
        kind = kinds.get(d.name)
        if isinstance(kind, tuple) and kind[0] == "norm":  # unit norm along the axis
            x = torch.nn.functional.normalize(x, dim=2 + kind[1])
        elif kind in ("log", "-log"):
            x = torch.nn.functional.logsigmoid(x) * (1 if kind == "log" else -1)
        elif kind == "unit":
            x = torch.sigmoid(x)
        out[d.name] = x
    for name, kind in kinds.items():  # ("against", a): -a ⊙ u, once a is drawn
        if isinstance(kind, tuple) and kind[0] == "against" and \
                out[name].shape == out[kind[1]].shape:
            out[name] = -out[kind[1]] * torch.sigmoid(out[name])
    return out


def gate_kinds(plan) -> dict:
    """{input name: "log" | "-log" | "unit" | ("norm", axis) | ("against", input)} for
    the inputs the transitions read as gates and keys."""
    inputs = {d.name for d in plan.ir.inputs}
    kinds: dict = {}
    for state in plan.states:
        transition = state.transition
        decay = getattr(transition, "decay", None)
        if isinstance(decay, sympy.Expr):
            kinds.update(_kinds(decay, inputs))
        for left, right in getattr(transition, "low_rank", ()) or ():
            kinds.update(_key_kinds(left, right, inputs))
    return kinds


def _key_kinds(left: sympy.Expr, right: sympy.Expr, inputs: set[str]) -> dict:
    """A term left[i]·right[l] of the transition whose vectors read one input k, both
    along their own index: k normalized along that axis, left's other input factors
    gates in (0, 1)."""
    reads = {str(r.base): r for r in right.atoms(sympy.Indexed) if str(r.base) in inputs}
    found: dict = {}
    for factor in sympy.Mul.make_args(left):
        name = _input_read(factor, inputs)
        if name in reads and right == reads[name]:
            axis = _differing_axis(factor, reads[name])
            if axis is not None:
                found[name] = ("norm", axis)
    if not found:
        return _pair_kinds(left, right, inputs)
    for factor in sympy.Mul.make_args(left):
        name = _input_read(factor, inputs)
        if name and name not in found:
            found[name] = "unit"
    return found


def _pair_kinds(left: sympy.Expr, right: sympy.Expr, inputs: set[str]) -> dict:
    """A term b[.., i]·a[.., l] of two inputs read alike but for that one axis: a
    normalized along it, b drawn against a."""
    b, a = _input_read(left, inputs), _input_read(right, inputs)
    if b is None or a is None or b == a:
        return {}
    axis = _differing_axis(left, right)
    return {} if axis is None else {a: ("norm", axis), b: ("against", a)}


def _differing_axis(a: sympy.Indexed, b: sympy.Indexed) -> int | None:
    """The one axis at which two reads of a tensor differ (k[h, i] and k[h, l]: 1)."""
    differ = [n for n, (x, y) in enumerate(zip(a.indices, b.indices)) if x != y]
    return differ[0] if len(differ) == 1 else None


def _kinds(decay: sympy.Expr, inputs: set[str]) -> dict[str, str]:
    found = {}
    for factor in sympy.Mul.make_args(decay):
        if isinstance(factor, sympy.exp):
            coef, read = factor.args[0].as_coeff_Mul()
            name = _input_read(read, inputs)
            if name and coef.is_real and coef != 0:
                found[name] = "log" if coef > 0 else "-log"
    coef, rest = (1 - decay).as_coeff_Mul()  # 1 - g
    for expr in (decay, rest if coef == 1 else None):
        name = _input_read(expr, inputs)
        if name:
            found[name] = "unit"
    return found


def _input_read(expr, inputs: set[str]) -> str | None:
    """The input's name when `expr` is a plain read of it, such as g[h, i]."""
    if isinstance(expr, sympy.Indexed) and str(expr.base) in inputs:
        return str(expr.base)
    if isinstance(expr, sympy.Symbol) and expr.name in inputs:  # a scalar input
        return expr.name
    return None
