"""A sequence split across processes (docs/distributed.md), on the CPU:

    torchrun --nproc_per_node 2 examples/distributed.py [--spec specs/gla.rec] [-B 2] [-T 2048]

Every rank draws the same inputs, keeps its slice of the sequence, runs the cell with
reclang.distributed.SequenceParallel, and prints what it sent and how far its outputs
and gradients are from one process running the whole sequence (rank 0 computes that).
Each run's bytes are printed for T and 2T: they do not depend on T.
"""

import argparse
import time

import torch
import torch.distributed as dist

import reclang
from reclang.distributed import SequenceParallel

GATES = {"g": torch.nn.functional.logsigmoid}  # log forget gates <= 0 (gla, simple_gla)


def inputs(m, B: int, T: int) -> dict:
    gen = torch.Generator().manual_seed(0)  # the same on every rank
    return {d.name: GATES.get(d.name, lambda x: x / d.shape[-1] ** 0.5)(
        torch.randn(B, T, *d.shape, generator=gen)) for d in m.ir.inputs}


def run(sp, xs: dict, rank: int, world: int):
    T = next(iter(xs.values())).shape[1]
    part = slice(rank * T // world, (rank + 1) * T // world)
    mine = {k: v[:, part].clone().requires_grad_() for k, v in xs.items()}
    before = dict(sp.bytes_sent)
    start = time.perf_counter()
    y, state = sp(**mine)
    y.square().mean().backward()
    took = time.perf_counter() - start
    sent = {k: v - before.get(k, 0) for k, v in sp.bytes_sent.items()}
    return y, state, mine, sent, took


def relative(got, want) -> float:
    """max |got - want| / max |want|."""
    return ((got - want).abs().max() / want.abs().max()).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default="specs/gla.rec")
    parser.add_argument("-B", type=int, default=2)
    parser.add_argument("-T", type=int, default=2048)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    m = reclang.load(args.spec).module("auto")
    sp = SequenceParallel(m)
    for T in (args.T, 2 * args.T):
        xs = inputs(m, args.B, T)
        y, state, mine, sent, took = run(sp, xs, rank, world)
        whole = {k: v.clone().requires_grad_() for k, v in xs.items()}
        y_all, state_all = m(**whole)
        # the loss of the whole sequence is the sum of the ranks' (each a mean over T_r)
        (y_all.square().mean() * world).backward()
        part = slice(rank * T // world, (rank + 1) * T // world)
        dy = relative(y, y_all[:, part])
        ds = max(relative(state[k], state_all[k]) for k in state)
        dx = max(relative(mine[k].grad, whole[k].grad[:, part]) for k in xs)
        print(f"rank {rank}/{world}, {m.ir.name} ({m.backend}), B={args.B}, T={T}: "
              f"sent {sent['forward']:,} bytes forward, {sent['backward']:,} backward; "
              f"difference from one process (relative): outputs {dy:.2g}, final state "
              f"{ds:.2g}, input gradients {dx:.2g}; forward+backward {took * 1e3:.0f} ms",
              flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
