"""Quickstart: write a cell, compile it, run it over sequences and step by step, and
read the code reclang generated for it.

    python examples/quickstart.py
"""

import torch

import reclang

SPEC = """
# minGRU (Feng et al., 2024, "Were RNNs all we needed?"): the gate and the candidate
# depend on the input only, so the recurrence is a diagonal linear one
cell min_gru(D = 8, N = 16):
    input x[D]
    param Wz[N, D], Wh[N, D] ~ normal(0, D ** -0.5)
    param bz[N] = 0, bh[N] = 0
    state h[N] = 0
    z[n] = sigmoid(sum(d: Wz[n, d] * x[d]) + bz[n])          # update gate
    h[n] <- (1 - z[n]) * h[n] + z[n] * (sum(d: Wh[n, d] * x[d]) + bh[n])
    out y[n] = h[n]
"""


def main():
    torch.manual_seed(0)
    cell = reclang.loads(SPEC, "min_gru.rec", N=4)      # load-time override of N
    print(cell, "->", cell.plan.summary)               # what the analyzer found
    m = cell.module()                                   # a torch.nn.Module
    print("parameters:", {n: list(p.shape) for n, p in m.named_parameters()})

    x = torch.randn(3, 50, 8)                           # [B, T, D]
    y, state = m(x=x)
    print(f"y: {list(y.shape)}, final h: {list(state['h'].shape)}")

    # decoding: one step at a time gives the same outputs
    s, steps = None, []
    for t in range(x.shape[1]):
        y_t, s = m.step(x=x[:, t], state=s)
        steps.append(y_t)
    print(f"max |sequence - steps| = {(torch.stack(steps, 1) - y).abs().max():.1e}")

    # continuing from a state: two halves make the whole
    y1, s1 = m(x=x[:, :20])
    y2, _ = m(x=x[:, 20:], state=s1)
    print(f"max |halves - whole|   = {(torch.cat([y1, y2], 1) - y).abs().max():.1e}")

    # the diagonal recurrence can also run as a parallel scan over time
    scan = cell.module("scan")
    scan.load_state_dict(m.state_dict())
    print(f"max |scan - loop|      = {(scan(x=x)[0] - y).abs().max():.1e}")

    print("\nThe generated code (sequential backend):\n")
    print(m.source)


if __name__ == "__main__":
    main()
