"""Train a cell compiled from a spec: a one-layer gated linear attention, written
entirely in reclang (projections, the recurrence, the linear readout), learns
associative recall: it reads key-value pairs, then a query key, and must answer the
value stored under that key.

    python examples/train_cell.py [--steps 600] [--seed 0]

Runs on the CPU (about 10-20 s for the default 600 steps). It prints the training loss
as it goes down, then the held-out loss and accuracy next to two baselines: chance
(uniform over the vocabulary) and the best a model can do that knows which values
appeared but not which key each belongs to.
"""

import argparse
import math
import time

import torch
from torch import nn

import reclang

VOCAB, PAIRS = 32, 8   # keys and values are drawn from 0..VOCAB-1; PAIRS pairs per sequence

# x is the embedding of the current token next to the previous token's (a token shift,
# as in RWKV or Mamba's short convolution): a value's step sees its key.
SPEC = """
# Gated linear attention (Yang et al., 2023) with its projections and a readout
cell recall_gla(D = 64, H = 2, K = 16, C = 32):
    input x[D]
    param Wq[H, K, D], Wk[H, K, D], Wv[H, K, D], Wg[H, K, D] ~ normal(0, D ** -0.5)
    param bg[H, K] = 4                                # forget gates start near 1
    param Wo[C, H, K] ~ normal(0, (H * K) ** -0.5)
    param bo[C] = 0
    state S[H, K, K] = 0
    q[h, i] = sum(d: Wq[h, i, d] * x[d])
    kr[h, i] = sum(d: Wk[h, i, d] * x[d])
    k[h, i] = kr[h, i] * rsqrt(sum(l: kr[h, l] ** 2) + 1e-6)    # unit-norm keys
    v[h, j] = sum(d: Wv[h, j, d] * x[d])
    g[h, i] = logsigmoid(sum(d: Wg[h, i, d] * x[d]) + bg[h, i]) / 4
    S[h, i, j] <- exp(g[h, i]) * S[h, i, j] + k[h, i] * v[h, j]
    o[h, j] = sum(i: q[h, i] * S[h, i, j]) * K ** -0.5
    out logits[c] = sum(h, j: Wo[c, h, j] * o[h, j]) + bo[c]
"""


class Recall(nn.Module):
    def __init__(self, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(2 * VOCAB + 1, d)  # keys, values, the query marker
        self.cell = reclang.loads(SPEC, "recall_gla.rec", D=2 * d, C=VOCAB).module()

    def forward(self, tokens):
        e = self.embed(tokens)                               # [B, T, d]
        previous = nn.functional.pad(e, (0, 0, 1, -1))       # e shifted right by one step
        logits, _ = self.cell(x=torch.cat([e, previous], -1))
        return logits                                        # [B, T, VOCAB]


def batch(size: int, generator: torch.Generator):
    """k1 v1 k2 v2 ... k8 v8 ? q -> the value after q. Keys are distinct tokens
    0..VOCAB-1, values are tokens VOCAB..2*VOCAB-1, `?` is token 2*VOCAB."""
    keys = torch.stack([torch.randperm(VOCAB, generator=generator)[:PAIRS]
                        for _ in range(size)])
    values = torch.randint(0, VOCAB, (size, PAIRS), generator=generator)
    pick = torch.randint(0, PAIRS, (size, 1), generator=generator)
    pairs = torch.stack([keys, values + VOCAB], -1).reshape(size, 2 * PAIRS)
    marker = torch.full((size, 1), 2 * VOCAB)
    tokens = torch.cat([pairs, marker, keys.gather(1, pick)], 1)
    return tokens, values.gather(1, pick)[:, 0], values


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    model = Recall()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    print(f"trainable parameters: {sum(p.numel() for p in model.parameters()):,} "
          f"(cell: {', '.join(n for n, _ in model.cell.named_parameters())})")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        tokens, target, _ = batch(64, data)
        loss = nn.functional.cross_entropy(model(tokens)[:, -1], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % max(1, args.steps // 10) == 0:
            print(f"step {step:4d}  loss {loss.item():.3f}")
    elapsed = time.perf_counter() - start

    tokens, target, values = batch(2000, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        logits = model(tokens)[:, -1]
    held_out = nn.functional.cross_entropy(logits, target).item()
    accuracy = (logits.argmax(-1) == target).float().mean().item()
    # Without binding keys to values, the best answer is uniform over the values seen:
    # its loss is the mean of ln(number of distinct values), its accuracy 1 / that.
    distinct = torch.tensor([len(set(row.tolist())) for row in values], dtype=torch.float)
    print(f"\nfinal training loss {loss.item():.3f} after {args.steps} steps ({elapsed:.0f} s)")
    print(f"held-out (2000 sequences):  loss {held_out:.3f}  accuracy {accuracy:6.1%}")
    print(f"baseline, chance:           loss {math.log(VOCAB):.3f}  accuracy "
          f"{1 / VOCAB:6.1%}")
    print(f"baseline, values seen:      loss {distinct.log().mean():.3f}  accuracy "
          f"{(1 / distinct).mean():6.1%}")


if __name__ == "__main__":
    main()
