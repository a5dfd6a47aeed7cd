"""Train a cell compiled from a spec: a small gated linear-attention layer learns an
associative-recall task (see key-value pairs, then answer the value of a queried key).

    python examples/train_cell.py [--steps 1500]

It prints the loss going down and compares the accuracy with chance. Runs on the CPU
in well under a minute (1500 steps: about 60% held-out accuracy, chance is 6%).
"""

import argparse
import time

import torch
from torch import nn

import reclang

SPEC = """
# Gated linear attention, one head group; q, k, v, g come from the layer's projections
cell recall_cell(H = 2, K = 16, V = 16):
    input q[H, K], k[H, K], v[H, V], g[H, K]
    state S[H, K, V] = 0
    S[h, i, j] <- exp(g[h, i]) * S[h, i, j] + k[h, i] * v[h, j]
    out o[h, j] = sum(i: q[h, i] * S[h, i, j]) * K ** -0.5
"""

VOCAB, PAIRS, H, K = 16, 4, 2, 16


class Recall(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.embed = nn.Embedding(2 * VOCAB + 1, d)
        self.proj = nn.Linear(d, H * K * 4)
        self.cell = reclang.loads(SPEC, "recall.rec").module()
        self.head = nn.Linear(H * K + d, VOCAB)

    def forward(self, tokens):
        x = self.embed(tokens)                                     # [B, T, d]
        B, T, _ = x.shape
        q, k, v, g = self.proj(x).view(B, T, 4, H, K).unbind(2)
        k = nn.functional.normalize(k, dim=-1)
        g = nn.functional.logsigmoid(g + 4) / 4                    # forget slowly
        o, _ = self.cell(q=q, k=k, v=v, g=g)
        return self.head(torch.cat([o.reshape(B, T, H * K), x], -1))


def batch(size: int, generator):
    """Key-value pairs (keys in 0..VOCAB-1, values shifted by VOCAB), then a query key
    (a marker token precedes it); the target is the query's value."""
    keys = torch.stack([torch.randperm(VOCAB, generator=generator)[:PAIRS] for _ in range(size)])
    values = torch.randint(0, VOCAB, (size, PAIRS), generator=generator)
    pick = torch.randint(0, PAIRS, (size,), generator=generator)
    pairs = torch.stack([keys, values + VOCAB], -1).reshape(size, 2 * PAIRS)
    marker = torch.full((size, 1), 2 * VOCAB)
    query = keys.gather(1, pick[:, None])
    return torch.cat([pairs, marker, query], 1), values.gather(1, pick[:, None])[:, 0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = Recall()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        tokens, target = batch(64, generator)
        loss = nn.functional.cross_entropy(model(tokens)[:, -1], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 10) == 0 or step == 1:
            print(f"step {step:4d}  loss {loss.item():.3f}")
    tokens, target = batch(1000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        accuracy = (model(tokens)[:, -1].argmax(-1) == target).float().mean().item()
    print(f"held-out accuracy {accuracy:.1%} (chance {1 / VOCAB:.1%}); "
          f"initial loss ≈ ln {VOCAB} = {torch.log(torch.tensor(float(VOCAB))):.3f}; "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
