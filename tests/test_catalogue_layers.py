"""The whole-layer cells of the catalogue — S4, LSSL, RWKV-4, QRNN, the Mamba block, the
Gated DeltaNet layer, RWKV-6 with token shift, KDA with grouped heads, TTT-Linear with
mini-batches — against references written here from their papers' equations in plain
PyTorch (loops and matrix ops, never reclang), in float64: outputs, final states and the
gradients of inputs, params and initial states, for the whole sequence, for two halves
with the state passed between them, and step by step, on every backend the cell's
verdicts accept (step by step once per distinct generated `step`: the backends share it)."""

import inspect
import itertools
import math

import pytest
import torch
from helpers import SPECS, _compare, _grads, _leaves, _loss, random_inputs, random_state, unit

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


def check(name: str, reference, hypers: dict, inputs=None, state=None, tune=None,
          atol=1e-9, rtol=1e-7):
    """The spec equals the reference on every backend it runs on and in every mode: the
    outputs, the final values of the declared states, and the gradients of a random
    functional of both with respect to inputs, params and the initial state.
    `inputs(module)` and `state(module)` draw them (default: standard normal, and the
    spec's own initial state); `tune(module)` sets params where the init is too tame."""
    cell = reclang.load(SPECS / f"{name}.rec", **hypers)
    steps_checked = set()  # `step` is one generated function, whatever the backend
    for backend in backends(cell):
        torch.manual_seed(0)
        module = cell.module(backend).double()
        if tune:
            with torch.no_grad():
                tune(module)
        x = inputs(module) if inputs else random_inputs(module, B, T)
        s = state(module) if state else None
        step = inspect.getsource(module._generated.step)
        for mode in ("full", "halves") + (() if step in steps_checked else ("steps",)):
            compare(f"{name} on {backend}, {mode}", module, reference, mode, x, s, atol, rtol)
        steps_checked.add(step)


def compare(what, module, reference, mode, inputs, state, atol, rtol):
    params = dict(module.named_parameters())
    xs, s0 = _leaves(inputs, state)
    outs, final = run(module, mode, xs, s0)
    ref_xs, ref_s0 = _leaves(inputs, state)
    if state is None:  # the spec's initial state, with its graph to the params it reads
        declared = {d.name for d in module.ir.states}
        ref_s0 = {k: v for k, v in module.initial_state(B, torch.float64, "cpu").items()
                  if k in declared}
    ref_outs, ref_final = reference(ref_xs, params, ref_s0)
    final = {k: final[k] for k in ref_final}  # the declared states (not lag's history)
    _compare(f"{what}: output", outs, ref_outs, atol, rtol)
    _compare(f"{what}: final state", final, ref_final, atol, rtol)
    ours = _grads(_loss(outs, final), {**xs, **(s0 or {}), **params})
    theirs = _grads(_loss(ref_outs, ref_final), {**ref_xs, **(ref_s0 if s0 else {}), **params})
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


# ---- S4 and LSSL: the discretized SSM with torch.linalg.solve, run step by step

def legs(n: int):
    """HiPPO-LegS: A[n, k] = −√(2n+1)√(2k+1) below the diagonal, −(n+1) on it; B = √(2n+1)."""
    q = torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1)
    A = torch.tril(-q[:, None] * q[None, :], -1) - torch.diag(torch.arange(n) + 1.0)
    return A, q


def ssm(A, B, alpha):
    """The GBT-discretized SSM per channel: Ā = (I − αΔA)⁻¹(I + (1−α)ΔA), B̄ = (I − αΔA)⁻¹ΔB."""
    def reference(x, p, s):
        dt = torch.exp(p["log_dt"])[:, None, None]                      # [D, 1, 1]
        eye = torch.eye(A.shape[0], dtype=A.dtype)
        left = eye - alpha * dt * A
        Abar = torch.linalg.solve(left, eye + (1 - alpha) * dt * A)     # [D, N, N]
        Bbar = torch.linalg.solve(left, dt[..., 0] * B)                 # [D, N]
        state, ys = s["s"], []
        for t in range(steps_of(x)):
            u = x["x"][:, t]
            state = torch.einsum("dnk,bdk->bdn", Abar, state) + Bbar * u[..., None]
            ys.append((p["C"] * state).sum(-1) + p["Dskip"] * u)
        return {"y": torch.stack(ys, 1)}, {"s": state}
    return reference


def s4(x, p, s):
    """A from its learned factors: −p_n q_k below the diagonal, −λ_n on it."""
    A = torch.tril(-p["p"][:, None] * p["q"][None, :], -1) - torch.diag(p["lam"])
    return ssm(A, p["B"], 0.5)(x, p, s)


def larger_steps(module):
    """Steps Δ up to 0.9 (the init's are at most 0.1), so that A's dynamics show in 7
    steps, and some factors 1 − αΔj of the closed-form inverse are negative."""
    module.log_dt.copy_(torch.linspace(-3, -0.1, module.log_dt.numel(), dtype=torch.float64))


def any_state(module):
    return random_state(module, B)


def trained_s4(module):
    """Larger steps, and factors of A away from HiPPO-LegS, as training moves them."""
    larger_steps(module)
    gen = torch.Generator().manual_seed(4)
    for name in ("p", "q", "lam"):
        param = getattr(module, name)
        param.mul_(1 + 0.3 * torch.rand(param.shape, generator=gen, dtype=param.dtype))


def test_s4():
    check("s4", s4, {"D": 3, "N": 5}, state=any_state, tune=trained_s4)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_lssl(alpha):
    A, Bv = legs(5)
    check("lssl", ssm(A, Bv, alpha), {"D": 3, "N": 5, "alpha": alpha}, state=any_state,
          tune=larger_steps)


# ---- the layers with a convolution over time: torch's conv1d, causal (padded on the left)

def causal_conv(x, weight, bias=None, groups=1):
    """x [B, T, C_in] through a causal Conv1d whose weight[..., w] weighs the input w steps
    back (torch's kernels run forward in time: flipped), zeros before the sequence."""
    width = weight.shape[-1]
    y = F.conv1d(F.pad(x.transpose(1, 2), (width - 1, 0)), weight.flip(-1), bias,
                 groups=groups)
    return y.transpose(1, 2)


def qrnn(x, p, s):
    """Z, F, O = tanh / σ / σ of one masked convolution each; fo-pooling by a loop."""
    n = p["bc"].shape[1]
    gates = causal_conv(x["x"], p["Wc"].flatten(0, 1), p["bc"].flatten())   # [B, T, 3N]
    z, f, o = torch.tanh(gates[..., :n]), torch.sigmoid(gates[..., n:2 * n]), \
        torch.sigmoid(gates[..., 2 * n:])
    c, hs = s["c"], []
    for t in range(steps_of(x)):
        c = f[:, t] * c + (1 - f[:, t]) * z[:, t]
        hs.append(o[:, t] * c)
    return {"h": torch.stack(hs, 1)}, {"c": c}


def test_qrnn():
    check("qrnn", qrnn, {"D": 3, "N": 4, "W": 3}, state=any_state)


def mamba_block(x, p, s):
    """The block of the paper's Figure 3, with the S6 scan as a loop."""
    xi, z = torch.einsum("cem,btm->cbte", p["Win"], x["x"])
    u = F.silu(causal_conv(xi, p["Kc"][:, None], p["bc"], groups=xi.shape[-1]))
    dt = F.softplus(u @ p["Wr"].T @ p["Wdt"].T + p["bdt"])                  # [B, T, E]
    Bu, Cu = u @ p["Wb"].T, u @ p["Wc"].T                                   # [B, T, N]
    A = -torch.exp(p["A_log"])
    state, ys = s["s"], []
    for t in range(steps_of(x)):
        state = torch.exp(dt[:, t, :, None] * A) * state + \
            (dt[:, t] * u[:, t])[..., None] * Bu[:, t, None]
        ys.append((state * Cu[:, t, None]).sum(-1) + p["Dskip"] * u[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return {"o": y @ p["Wout"].T}, {"s": state}


def test_mamba_block():
    check("mamba_block", mamba_block, {"M": 3, "E": 4, "N": 3, "R": 2}, state=any_state)


def gated_delta_net_layer(x, p, s):
    """fla's layer: short convolutions with SiLU, L2-normed q and k, the gated delta rule
    as a loop, RMSNorm per head, the SiLU output gate, the out-projection."""
    def short(W, C):                                                        # [B, T, H, X]
        H, X = W.shape[:2]
        y = causal_conv(x["x"] @ W.flatten(0, 1).T, C.flatten(0, 1)[:, None],
                        groups=H * X)
        return F.silu(y).unflatten(-1, (H, X))

    def l2(y):
        return y / torch.sqrt((y * y).sum(-1, keepdim=True) + 1e-6)

    q, k, v = l2(short(p["Wq"], p["Cq"])), l2(short(p["Wk"], p["Ck"])), short(p["Wv"], p["Cv"])
    beta = torch.sigmoid(x["x"] @ p["Wbeta"].T)                              # [B, T, H]
    g = -torch.exp(p["A_log"]) * F.softplus(x["x"] @ p["Wa"].T + p["dt_bias"])
    S, outs = s["S"], []
    for t in range(steps_of(x)):
        kt, bt = k[:, t], beta[:, t, :, None, None]
        eye = torch.eye(kt.shape[-1], dtype=kt.dtype)
        S = torch.exp(g[:, t, :, None, None]) * (eye - bt * outer(kt, kt)) @ S + \
            bt * outer(kt, v[:, t])
        outs.append(torch.einsum("bhi,bhij->bhj", q[:, t], S) * kt.shape[-1] ** -0.5)
    o = torch.stack(outs, 1)
    normed = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * p["gain"]
    gate = F.silu(torch.einsum("hjm,btm->bthj", p["Wg"], x["x"]))
    return {"o": torch.einsum("mhj,bthj->btm", p["Wo"], normed * gate)}, {"S": S}


def outer(a, b):
    return a[..., :, None] * b[..., None, :]


def test_gated_delta_net_layer():
    check("gated_delta_net_layer", gated_delta_net_layer,
          {"M": 3, "H": 2, "K": 3, "V": 2}, state=any_state)


# ---- RWKV-6's time mixing, as the reference code writes it (time_shift pads a zero)

def rwkv6_tokenshift(x, p, s):
    xs = x["x"]
    H, K = p["u"].shape
    dx = F.pad(xs, (0, 0, 1, -1)) - xs                                      # x_{t-1} − x_t
    lora = torch.tanh((xs + dx * p["maa_x"]) @ p["maa_A"].flatten(1))       # [B, T, 5L]
    lora = torch.einsum("btml,mlc->mbtc", lora.unflatten(-1, (5, -1)), p["maa_B"])
    xw, xk, xv, xr, xg = (xs + dx * (p["maa"][m] + lora[m]) for m in range(5))
    r, k, v = (y @ W.flatten(0, 1).T for y, W in ((xr, p["Wr"]), (xk, p["Wk"]), (xv, p["Wv"])))
    g = F.silu(xg @ p["Wg"].flatten(0, 1).T)
    d = p["decay"].flatten() + torch.tanh(xw @ p["decay_A"]) @ p["decay_B"].flatten(1)
    w = torch.exp(-torch.exp(d))
    r, k, v, w = (y.unflatten(-1, (H, K)) for y in (r, k, v, w))
    S, ys = s["S"], []
    for t in range(steps_of(x)):
        kv = outer(k[:, t], v[:, t])
        ys.append(torch.einsum("bhi,bhij->bhj", r[:, t], S + p["u"][..., None] * kv))
        S = w[:, t, ..., None] * S + kv
    y = torch.stack(ys, 1).flatten(-2)                                      # [B, T, C]
    normed = F.group_norm(y.flatten(0, 1), H, p["ln_w"].flatten(), p["ln_b"].flatten(),
                          eps=64e-5).unflatten(0, y.shape[:2])
    return {"o": (normed * g) @ p["Wo"].flatten(1).T}, {"S": S}


def lively_loras(module):
    """The low-rank mixes start at A = 0, which hides B's gradient: draw them."""
    for name in ("maa_A", "decay_A"):
        getattr(module, name).normal_(0, 0.5)


def test_rwkv6_tokenshift():
    check("rwkv6_tokenshift", rwkv6_tokenshift, {"H": 2, "K": 2, "L": 2, "LD": 3},
          state=any_state, tune=lively_loras)


# ---- KDA with grouped heads, and TTT-Linear's mini-batch gradient descent

def kda(x, p, s):
    """S ← (I − β k kᵀ) Diag(α) S + β k vᵀ, the key heads repeated over each group."""
    G = x["v"].shape[2] // x["k"].shape[2]
    q, k = (x[n].repeat_interleave(G, dim=2) for n in ("q", "k"))
    S, outs = s["S"], []
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    for t in range(steps_of(x)):
        kt, bt = k[:, t], x["beta"][:, t, :, None, None]
        S = (eye - bt * outer(kt, kt)) @ (torch.exp(x["g"][:, t, ..., None]) * S) + \
            bt * outer(kt, x["v"][:, t])
        outs.append(torch.einsum("bhi,bhij->bhj", q[:, t], S) * kt.shape[-1] ** -0.5)
    return {"o": torch.stack(outs, 1)}, {"S": S}


def kda_inputs(module):
    """Unit keys, log decays, β in (0, 1); 4 steps (2 + 2 in halves): the interpreter runs
    the chunk and recurrent kernels slowly."""
    return random_inputs(module, B, 4, k=unit, g=F.logsigmoid, beta=torch.sigmoid)


def test_kda():
    check("kda", kda, {"HK": 2, "G": 2, "K": 2, "V": 2}, inputs=kda_inputs, state=any_state)


def ttt_linear(x, p, s, BT):
    """Mini-batches of BT steps from t = 0: every gradient of a batch at the weight W_b the
    batch starts from, W_t = W_b − Σ_{s ≤ t in the batch} η_s k_s (W_bᵀ k_s − v_s)ᵀ."""
    q, k, v, eta = x["q"], x["k"], x["v"], x["eta"]
    W, outs = s["W"], []
    for lo in range(0, steps_of(x), BT):
        Wb = W
        err = torch.einsum("bhij,bthi->bthj", Wb, k[:, lo:lo + BT]) - v[:, lo:lo + BT]
        grads = eta[:, lo:lo + BT, :, None, None] * outer(k[:, lo:lo + BT], err)
        Ws = Wb[:, None] - grads.cumsum(1)                                  # [B, bt, H, K, V]
        outs.append(torch.einsum("bthi,bthij->bthj", q[:, lo:lo + BT], Ws))
        W = Ws[:, -1]
    return {"z": torch.cat(outs, 1)}, {"W": W, "Wb": Wb}


@pytest.mark.parametrize("BT, state", [(4, any_state), (4, None), (1, any_state)])
def test_ttt_linear(BT, state):
    """BT = 4: the halves (3 + 4 steps) cut a mini-batch; BT = 1 is plain online GD; the
    spec's own initial state is the learned W_init."""
    check("ttt_linear", lambda x, p, s: ttt_linear(x, p, s, BT),
          {"H": 2, "K": 3, "V": 2, "BT": BT}, state=state)


def test_rwkv4_first_step_has_no_nan():
    """From the spec's initial state (p = −inf: nothing seen yet) the first step's output
    and every gradient are finite: e^{p − q} is 0, not NaN, and so is its derivative."""
    cell = reclang.load(SPECS / "rwkv4.rec", D=3)
    assert cell.module().initial_state(1, torch.float64, "cpu")["p"].isneginf().all()
    for backend in backends(cell):
        module = cell.module(backend).double()
        x, _ = _leaves(random_inputs(module, B, 1), None)
        o, final = module(**x)
        grads = torch.autograd.grad(o.sum() + final["a"].sum() + final["b"].sum(),
                                    [*x.values(), *module.parameters()])
        assert all(g.isfinite().all() for g in (o, *grads)), backend


def test_rwkv_inits_are_the_reference_codes():
    """RWKV-4's and RWKV-6's first-layer inits, as the reference code computes them."""
    m4 = reclang.load(SPECS / "rwkv4.rec", D=5).module().double()
    d = torch.arange(5, dtype=torch.float64)
    torch.testing.assert_close(m4.time_decay.detach(), -5 + 8 * (d / 4) ** 0.7)
    zigzag = torch.tensor([0.0, 1, -1, 0, 1], dtype=torch.float64)
    torch.testing.assert_close(m4.time_first.detach(), math.log(0.3) + 0.5 * zigzag)
    m6 = reclang.load(SPECS / "rwkv6_tokenshift.rec", H=2, K=3).module().double()
    c = torch.arange(6, dtype=torch.float64)
    ddd = c / 6
    mixes = torch.stack([1 - ddd, 1 - ddd, 1 - ddd, 1 - ddd ** 0.5, 1 - ddd ** 0.5])
    torch.testing.assert_close(m6.maa_x.detach(), 1 - ddd)
    torch.testing.assert_close(m6.maa.detach(), mixes)  # w, k, v, r, g
    torch.testing.assert_close(m6.decay.detach().flatten(), -6 + 5 * (c / 5) ** 0.7)
    torch.testing.assert_close(m6.u.detach().flatten(), 0.1 * ((c + 1) % 3 - 1))
    assert not m6.maa_A.detach().any() and not m6.decay_A.detach().any()
