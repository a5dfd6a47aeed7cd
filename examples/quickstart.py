"""Quickstart: write a cell, compile it, run it over a sequence and step by step.

    python examples/quickstart.py
"""

import torch

import reclang

SPEC = """
# A gated linear attention cell with a key-wise forget gate (GLA, Yang et al. 2023)
cell gla(H = 2, K = 8, V = 8):
    input q[H, K], k[H, K], v[H, V], g[H, K]     # g: log forget gate (<= 0)
    state S[H, K, V] = 0
    S[h, i, j] <- exp(g[h, i]) * S[h, i, j] + k[h, i] * v[h, j]
    out o[h, j] = sum(i: q[h, i] * S[h, i, j]) * K ** -0.5
"""


def main():
    torch.manual_seed(0)
    cell = reclang.loads(SPEC, "gla.rec")
    print(cell.plan.summary)                        # what the analyzer proved

    m = cell.module()                               # a torch.nn.Module
    B, T = 3, 50
    q, k, v = (torch.randn(B, T, 2, 8) for _ in range(3))
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, 2, 8))
    o, state = m(q=q, k=k, v=v, g=g)
    print(f"o: {list(o.shape)}, final S: {list(state['S'].shape)}")

    # decoding: one step at a time from the same initial state gives the same outputs
    s, steps = None, []
    for t in range(T):
        o_t, s = m.step(q=q[:, t], k=k[:, t], v=v[:, t], g=g[:, t], state=s)
        steps.append(o_t)
    print(f"max |full - step|: {(torch.stack(steps, 1) - o).abs().max().item():.2e}")

    # continue from a state: two halves equal the whole
    o1, s1 = m(q=q[:, :20], k=k[:, :20], v=v[:, :20], g=g[:, :20])
    o2, _ = m(q=q[:, 20:], k=k[:, 20:], v=v[:, 20:], g=g[:, 20:], state=s1)
    print(f"max |halves - whole|: {(torch.cat([o1, o2], 1) - o).abs().max().item():.2e}")

    print("\nthe generated code:\n")
    print(m.source)


if __name__ == "__main__":
    main()
