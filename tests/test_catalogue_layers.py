"""The whole-layer cells of the catalogue — S4, LSSL, RWKV-4, QRNN, the Mamba block, the
Gated DeltaNet layer, RWKV-6 with token shift, KDA with grouped heads, TTT-Linear with
mini-batches — against references written here from their papers' equations in plain
PyTorch (loops and matrix ops, never reclang), in float64: outputs, final states and the
gradients of inputs, params and initial states, for the whole sequence, for two halves
with the state passed between them, and step by step, on every backend the cell's
verdicts accept."""

import itertools
import math

import torch
from helpers import SPECS, _compare, _grads, _leaves, _loss, random_inputs, random_state

import reclang

F = torch.nn.functional
B, T = 2, 7  # T odd: the halves are 3 and 4 steps


def backends(cell) -> list[str]:
    """Every backend whose verdict accepts the cell (triton under its interpreter here)."""
    return [v.backend for v in cell.verdicts if v.supported]


def run(module, mode: str, xs: dict, s0: dict | None):
    """The module's outputs [B, T, ...] and final state, computed in one call ("full"),
    in two calls with the state passed ("halves") or by `step` ("steps")."""
    steps = next(iter(xs.values())).shape[1]
    if mode == "full":
        cuts = [0, steps]
    elif mode == "halves":
        cuts = [0, steps // 2, steps]
    else:
        cuts = list(range(steps + 1))
    pieces, state = [], s0
    for lo, hi in itertools.pairwise(cuts):
        if mode == "steps":
            y, state = module.step(state=state, **{k: v[:, lo] for k, v in xs.items()})
            y = {k: v.unsqueeze(1) for k, v in as_dict(module, y).items()}
        else:
            y, state = module(state=state, **{k: v[:, lo:hi] for k, v in xs.items()})
            y = as_dict(module, y)
        pieces.append(y)
    return {k: torch.cat([p[k] for p in pieces], 1) for k in pieces[0]}, state


def as_dict(module, y) -> dict:
    return y if isinstance(y, dict) else {module.ir.outputs[0].arg: y}


def check(name: str, reference, hypers: dict, inputs=None, state=None, atol=1e-9,
          rtol=1e-7):
    """The spec equals the reference on every backend it runs on and in every mode: the
    outputs, the final values of the declared states, and the gradients of a random
    functional of both with respect to inputs, params and the initial state.
    `inputs(module)` and `state(module)` draw them (default: standard normal, and the
    spec's own initial state)."""
    cell = reclang.load(SPECS / f"{name}.rec", **hypers)
    for backend in backends(cell):
        torch.manual_seed(0)
        module = cell.module(backend).double()
        x = inputs(module) if inputs else random_inputs(module, B, T)
        s = state(module) if state else None
        for mode in ("full", "halves", "steps"):
            compare(f"{name} on {backend}, {mode}", module, reference, mode, x, s, atol, rtol)


def compare(what, module, reference, mode, inputs, state, atol, rtol):
    params = dict(module.named_parameters())
    xs, s0 = _leaves(inputs, state)
    outs, final = run(module, mode, xs, s0)
    ref_xs, ref_s0 = _leaves(inputs, state if state is not None else {
        k: v for k, v in module.initial_state(B, torch.float64, "cpu").items()
        if k in {d.name for d in module.ir.states}})
    ref_outs, ref_final = reference(ref_xs, params, ref_s0)
    final = {k: final[k] for k in ref_final}  # the declared states (not lag's history)
    _compare(f"{what}: output", outs, ref_outs, atol, rtol)
    _compare(f"{what}: final state", final, ref_final, atol, rtol)
    ours = _grads(_loss(outs, final), {**xs, **(s0 or {}), **params})
    theirs = _grads(_loss(ref_outs, ref_final), {**ref_xs, **(ref_s0 if state else {}),
                                                  **params})
    _compare(f"{what}: gradient", {k: ours[k] for k in theirs}, theirs, atol * 10, rtol * 10)


def steps_of(x: dict) -> int:
    return next(iter(x.values())).shape[1]


# ---- RWKV-4: the WKV as the paper's weighted average over the past, one softmax per step

def rwkv4(x, p, s):
    """wkv_t = Σ_i e^{l_ti} v_i / Σ_i e^{l_ti} with l_ti = k_i − (t−1−i) w for i < t and
    u + k_t for i = t; the initial state enters as one more term e^{p0 − t w} (a0, b0).
    Computed with the max of each step's exponents taken out (a softmax), so that it
    holds for large keys too. The final (a, b, p): the state's sums with their max p."""
    k, v, n = x["k"], x["v"], steps_of(x)
    w, u = torch.exp(p["time_decay"]), p["time_first"]
    t = torch.arange(n, dtype=k.dtype)
    lag = (t[:, None] - 1 - t[None, :])[..., None] * w                 # [t, i, D]
    i, now = t[None, :, None], t[:, None, None]                         # [t, i, 1]
    logits = torch.where(i < now, k[:, None] - lag, torch.where(i == now, (u + k)[:, :, None],
                                                                -math.inf))
    init = (s["p"][:, None] - t[:, None] * w)                          # [B, t, D]
    top = torch.maximum(logits.max(2).values, init)
    e, e0 = torch.exp(logits - top[:, :, None]), torch.exp(init - top)
    num = (e * v[:, None]).sum(2) + e0 * s["a"][:, None]
    den = e.sum(2) + e0 * s["b"][:, None]
    decay = (n - 1 - t)[:, None] * w                                   # [i, D]
    ends = torch.cat([k - decay, (s["p"] - n * w)[:, None]], 1)        # [B, n + 1, D]
    p_end = ends.max(1).values
    f = torch.exp(ends - p_end[:, None])
    a = (f[:, :n] * v).sum(1) + f[:, n] * s["a"]
    b = f[:, :n].sum(1) + f[:, n] * s["b"]
    return {"o": torch.sigmoid(x["r"]) * num / den}, {"a": a, "b": b, "p": p_end}


def rwkv4_state(module):
    """a any, b > 0 (a sum of exponentials), p any."""
    return random_state(module, B, b=lambda b: b.abs() + 0.1)


def test_rwkv4():
    check("rwkv4", rwkv4, {"D": 3}, state=rwkv4_state)
    check("rwkv4", rwkv4, {"D": 3})


def test_rwkv4_large_keys_need_the_stabilizer():
    """Keys of a few hundred overflow e^k in float64: the stabilized sums do not."""
    check("rwkv4", rwkv4, {"D": 3}, state=rwkv4_state,
          inputs=lambda m: random_inputs(m, B, T, k=lambda k: 400 * k))
