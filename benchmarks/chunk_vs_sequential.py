"""Time the chunk backend against the sequential one and against a hand-written
PyTorch chunkwise implementation of the same cell, side by side, on the CPU.

    python benchmarks/chunk_vs_sequential.py [--T 512 2048 8192] [--repeat 3]

Cells: GLA (key-wise decay), Gated DeltaNet (scalar decay + rank-1 WY part), Mamba-2
(scalar decay), float32, fla's layout. Prints milliseconds (best of --repeat) for the
forward and forward+backward passes, the speed-up of the chunk backend over the loop,
the chunk backend's time relative to the hand-written one (≤ 1.0 is as fast), and the
peak tensor memory of one forward+backward of each (reclang.timing.peak_memory).
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

import reclang
from reclang.timing import best_of, peak_memory

F = torch.nn.functional
SPECS = Path(__file__).resolve().parent.parent / "specs"
H, K, V, B = 4, 64, 64, 2


# ---- hand-written chunkwise references (written here from the papers' equations)
def gla_chunk(q, k, v, g, C=64):
    """GLA, chunkwise with the decays relative to each chunk's start (the simple form
    of Yang et al. 2023, without secondary chunking: fine for moderate gates)."""
    Bn, T = q.shape[:2]
    q, k, v, g = (x.reshape(Bn, T // C, C, H, -1).transpose(2, 3) for x in (q, k, v, g))
    G = g.cumsum(3)
    qd, kd = q * G.exp() * K ** -0.5, k * (-G).exp()
    S = q.new_zeros(Bn, H, K, V)
    scores = (qd @ kd.transpose(-1, -2)).tril()
    kv_end = (k * (G[..., -1:, :] - G).exp()).transpose(-1, -2) @ v
    outs = []
    for n in range(T // C):
        outs.append(qd[:, n] @ S + scores[:, n] @ v[:, n])
        S = G[:, n, :, -1, :, None].exp() * S + kv_end[:, n]
    return torch.stack(outs, 1).transpose(2, 3).reshape(Bn, T, H, V)


def mamba2_chunk(x, dt, Bm, Cm, A_log, dt_bias, Dskip, C=64):
    """Mamba-2's SSD, chunkwise: scalar decay per head, shared B and C."""
    Bn, T = x.shape[:2]
    delta = F.softplus(dt + dt_bias)                        # [B, T, H]
    w = -delta * A_log.exp()
    ch = lambda t: t.reshape(Bn, T // C, C, *t.shape[2:])  # noqa: E731
    w, delta, xs, Bc, Cc = ch(w), ch(delta), ch(x), ch(Bm), ch(Cm)
    G = w.cumsum(2)                                         # [B, N, C, H]
    gap = G[:, :, :, None] - G[:, :, None, :]               # [B, N, t, s, H]
    mask = torch.ones(C, C, dtype=torch.bool).tril()[..., None]
    L = gap.masked_fill(~mask, float("-inf")).exp()
    cb = Cc @ Bc.transpose(-1, -2)                          # [B, N, t, s]
    y_intra = torch.einsum("bnts,bntsh,bnsh,bnshp->bnthp", cb, L, delta, xs)
    to_end = (G[:, :, -1:] - G).exp() * delta               # [B, N, C, H]
    S = x.new_zeros(Bn, H, x.shape[-1], Bm.shape[-1])
    ys = []
    for n in range(T // C):
        ys.append(torch.einsum("tn,hpn,th->thp", Cc[0, n], S[0], G[0, n].exp())[None]
                  if Bn == 1 else torch.einsum("btn,bhpn,bth->bthp", Cc[:, n], S,
                                               G[:, n].exp()))
        S = G[:, n, -1].exp()[..., None, None] * S + torch.einsum(
            "bth,bthp,btn->bhpn", to_end[:, n], xs[:, n], Bc[:, n])
    y = torch.stack(ys, 1) + y_intra
    return y.reshape(Bn, T, H, -1) + Dskip[:, None] * x


def gated_delta_chunk(q, k, v, g, beta, C=64):
    """Gated DeltaNet, chunkwise with the UT transform (Yang et al. 2024)."""
    Bn, T = q.shape[:2]
    q, k, v = (x.reshape(Bn, T // C, C, H, -1).transpose(2, 3) for x in (q, k, v))
    g, beta = (x.reshape(Bn, T // C, C, H).transpose(2, 3) for x in (g, beta))
    G = g.cumsum(-1)
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(
        ~torch.ones(C, C, dtype=torch.bool).tril(), float("-inf")).exp()
    kb = k * beta[..., None]
    A = -(kb @ k.transpose(-1, -2) * decay).tril(-1)
    eye = torch.eye(C)
    Tm = torch.linalg.solve_triangular(eye - A, eye, upper=False)
    w = Tm @ (kb * G.exp()[..., None])
    u = Tm @ vb if (vb := v * beta[..., None]) is not None else None
    S = q.new_zeros(Bn, H, K, V)
    outs = []
    qs = q * K ** -0.5
    attn = (qs @ k.transpose(-1, -2) * decay)
    for n in range(T // C):
        u_n = u[:, n] - w[:, n] @ S
        outs.append((qs[:, n] * G[:, n].exp()[..., None]) @ S + attn[:, n] @ u_n)
        S = G[:, n, :, -1, None, None].exp() * S + \
            (k[:, n] * (G[:, n, :, -1:] - G[:, n]).exp()[..., None]).transpose(-1, -2) @ u_n
    return torch.stack(outs, 1).transpose(2, 3).reshape(Bn, T, H, V)


def inputs_for(name, cell, T):
    torch.manual_seed(0)
    x = {d.name: torch.randn(B, T, *d.shape) for d in cell.ir.inputs}
    if name == "gla":
        x["g"] = F.logsigmoid(x["g"]) / 16
    if name == "gated_delta_net":
        x["k"], x["q"] = F.normalize(x["k"], dim=-1), F.normalize(x["q"], dim=-1)
        x["beta"], x["g"] = torch.sigmoid(x["beta"]), F.logsigmoid(x["g"]) / 16
    return x


def hand_written(name, module, x):
    p = dict(module.named_parameters())
    if name == "gla":
        return lambda: gla_chunk(x["q"], x["k"], x["v"], x["g"])
    if name == "mamba2":
        return lambda: mamba2_chunk(x["x"], x["dt"], x["B"], x["C"], p["A_log"],
                                    p["dt_bias"], p["Dskip"])
    return lambda: gated_delta_chunk(x["q"], x["k"], x["v"], x["g"], x["beta"])


def functions(name, hypers, T):
    """The three implementations of a cell as functions of no arguments."""
    cell = reclang.load(SPECS / f"{name}.rec", **hypers)
    torch.manual_seed(0)
    sequential, chunk = cell.module("sequential"), cell.module("chunk")
    chunk.load_state_dict(sequential.state_dict())
    x = {k: v.requires_grad_() for k, v in inputs_for(name, cell, T).items()}
    return {"sequential": lambda: sequential(**x)[0], "chunk": lambda: chunk(**x)[0],
            "hand": hand_written(name, chunk, x)}


def training_step(name, hypers, T, label):
    """One forward+backward of one implementation, as a function of no arguments."""
    fn = functions(name, hypers, T)[label]
    return lambda: fn().square().mean().backward()


def run(name, hypers, T, repeat):
    fns = functions(name, hypers, T)
    with torch.no_grad():  # the three agree before anything is timed
        ref = fns["sequential"]()
        for label in ("chunk", "hand"):
            err = (fns[label]() - ref).abs().max().item() / ref.abs().max().item()
            assert err < 1e-3, (name, label, err)
    result = {}
    for label, fn in fns.items():
        with torch.no_grad():
            result[label, "fwd"] = best_of(fn, repeat)
        result[label, "fwd+bwd"] = best_of(lambda: fn().square().mean().backward(), repeat)
    peak = {label: peak_memory(training_step(name, hypers, T, label)) for label in fns}
    return result, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, B={B}, H={H}, K=V={K}, float32")
    print(f"{'cell':<16}{'T':>5}  {'pass':<8}{'sequential':>11}{'chunk':>9}{'hand':>9}"
          f"{'chunk/seq':>10}{'chunk/hand':>11}   peak MiB seq/chunk/hand")
    cases = [("gla", dict(H=H, K=K, V=V)), ("gated_delta_net", dict(H=H, K=K, V=V)),
             ("mamba2", dict(H=H, P=64, N=64))]
    for name, hypers in cases:
        for T in args.T:
            r, peak = run(name, hypers, T, args.repeat)
            for what in ("fwd", "fwd+bwd"):
                seq, ch, hand = (r[k, what] * 1e3 for k in ("sequential", "chunk", "hand"))
                mem = "/".join(f"{peak[k] / 2**20:.0f}" for k in ("sequential", "chunk", "hand"))
                mem = mem if what == "fwd+bwd" else ""
                print(f"{name:<16}{T:>5}  {what:<8}{seq:>9.1f}ms{ch:>7.1f}ms{hand:>7.1f}ms"
                      f"{seq / ch:>9.1f}x{ch / hand:>10.2f}x   {mem}")


if __name__ == "__main__":
    main()
