"""SequenceParallel (reclang/distributed/) on 2 and 4 gloo processes against one process
running the whole sequences: outputs, final states and every gradient, float64, to
1e-10; with and without an initial state; packed sequences (cu_seqlens) that cross rank
boundaries; the bytes each rank sends; a 2 x 2 (data x sequence) mesh; FSDP.

One start of the processes per world size runs every case (each rank writes what failed
to a file); they are forked from a forkserver that imported torch and reclang once, killed
past a hard timeout, and gloo's own timeout ends a stuck collective.
"""

import copy
import datetime
import functools
import json
import os
import pickle
import socket
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import helpers  # noqa: E402

import reclang  # noqa: E402
from reclang.analysis.plan import make_plan  # noqa: E402
from reclang.distributed import SequenceParallel, summary  # noqa: E402

CELLS = ("gla", "simple_gla", "delta_net", "gated_delta_net", "rwkv7", "min_gru",
         "mamba_s6", "lru")
# What one sequence's summary holds (float64 values), with helpers.SMALL's sizes: its
# transition Φ (a decay over the axes it varies along; dplr: K x K per head) and its
# contribution c (the state's size); complex values count twice. The backward sends the
# adjoints of the rank's initial state and of the final state: 2 x the state's size.
SUMMARY = {  # cell: (Φ values, state values) per sequence
    "gla": (2 * 4, 2 * 4 * 3),          # decay per key row [H, K]; S [H, K, V]
    "simple_gla": (2, 2 * 4 * 3),       # one decay per head [H]
    "delta_net": (2 * 4 * 4, 2 * 4 * 3),  # I - β k kᵀ products: [H, K, K]
    "gated_delta_net": (2 * 4 * 4, 2 * 4 * 3),
    "rwkv7": (2 * 4 * 4, 2 * 4 * 3),
    "min_gru": (4, 4),                  # h [N], decay along n
    "mamba_s6": (3 * 4, 3 * 4),         # s [D, N], decay along d, n
    "lru": (4, 4),                      # h [N], complex: two float64 each
}
TOL = 1e-10
OFFSETS = [0, 4, 9, 12]  # 3 packed sequences over 12 steps: across 6 (P = 2), 3, 6 (P = 4)


def test_unsplittable_cells_are_refused_naming_the_plan():
    for name, form, line in (("lstm", "nonlinear", 15), ("aaren", "associative", 20),
                             ("titans", "coupled", None)):
        with pytest.raises(reclang.RecError) as err:
            SequenceParallel(helpers.small(name).module())
        text = str(err.value)
        assert f"cell {name} cannot be split across ranks: its plan is {form}" in text
        assert line is None or text.startswith(f"specs/{name}.rec:{line}:") or \
            f"{name}.rec:{line}:" in text.splitlines()[0]
        assert "^" in text  # the spec line with a caret


def test_a_wrapper_copies_and_pickles():
    sp = SequenceParallel(helpers.small("min_gru").module())
    for twin in (copy.deepcopy(sp), pickle.loads(pickle.dumps(sp))):
        assert twin.layouts == sp.layouts and twin.group is None
        assert torch.equal(twin.module.Wz, sp.module.Wz) and twin.module.Wz is not sp.module.Wz


def test_lengths_are_refused_before_any_collective():
    m = helpers.small("min_gru").module()
    with pytest.raises(TypeError, match="takes cu_seqlens .* not lengths"):
        SequenceParallel(m)(x=torch.randn(2, 5, 3), lengths=torch.tensor([5, 3]))


def test_the_transition_is_exact_where_subtracting_loses_it():
    """A slice's transition Φ is a derivative, not (Φ·1 + c) - c: with |c| up to 2.5e3
    and Φ down to 1.4e-13 (GLA, float32) the difference loses every digit of Φ (relative
    error 1.0; the derivative's: 5.2e-7)."""
    torch.manual_seed(0)
    m = helpers.small("gla").module("chunk")
    gen = torch.Generator().manual_seed(1)
    g = torch.nn.functional.logsigmoid(torch.randn(1, 64, 2, 4, generator=gen)) / 2
    xs = {"q": torch.randn(1, 64, 2, 4, generator=gen), "g": g,
          "k": 30 * torch.randn(1, 64, 2, 4, generator=gen),
          "v": 30 * torch.randn(1, 64, 2, 3, generator=gen)}
    exact = torch.exp(g.double().sum(1))[..., None]  # the product of the decays, [B, H, K, 1]
    phi = summary.transition(m, xs, summary.layouts(make_plan(m.ir)), torch.float32, 16)[0]
    c = m(**xs, state={"S": torch.zeros(1, 2, 4, 3)})[1]["S"]
    subtracted = m(**xs, state={"S": torch.ones(1, 2, 4, 3)})[1]["S"] - c
    assert exact.min() < 1e-12 and c.abs().max() > 1e3
    assert ((phi.double() - exact) / exact).abs().max() < 1e-6
    assert ((subtracted.double() - exact) / exact).abs().max() > 0.5


@pytest.mark.parametrize("world", [2, 4])
def test_sequence_parallel_equals_one_process(world, tmp_path):
    torch.save(_references(), tmp_path / "references.pt")
    results = _spawn(world, tmp_path, timeout=240)
    failures = [f for r in results for f in r["failures"]]
    assert not failures, "\n".join(failures)
    print(f"\nP = {world}: bytes sent per rank and layer, forward / backward:")
    for case, sent in results[0]["bytes"].items():
        print(f"  {case}: {sent['forward']:,} / {sent['backward']:,}")


@functools.cache
def _references() -> list[dict]:
    return [_reference(*case) for case in CASES]


# ---- the processes ---------------------------------------------------------------------
def _spawn(world: int, folder: Path, timeout: float) -> list[dict]:
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("forkserver")  # a clean process, forked with torch imported once
    ctx.set_forkserver_preload([__name__])
    procs = [ctx.Process(target=_rank_main, args=(rank, world, port, str(folder)))
             for rank in range(world)]
    for p in procs:
        p.start()
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    for p in procs:
        p.join(max(0.0, (deadline - datetime.datetime.now()).total_seconds()))
    stuck = [p for p in procs if p.is_alive()]
    for p in stuck:
        p.kill()
    assert not stuck, f"{len(stuck)} of {world} processes still ran after {timeout} s"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]


def _rank_main(rank: int, world: int, port: int, folder: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    failures, sent = [], {}
    references = torch.load(Path(folder) / "references.pt")
    for case, want in zip(CASES, references):
        cell, packed, given, T = case
        name = f"P={world} {cell} {'cu_seqlens' if packed else 'dense'} T={T} " \
               f"{'given state' if given else 'no state'}"
        failures += _guard(name, _check_case, *case, sent, want)
    failures += _guard(f"P={world} bytes", _check_bytes, sent)
    if world == 2:
        failures += _guard("autocast", _check_autocast)
        failures += _guard("a state initialized from a param", _check_learned_init)
    if world == 4:
        failures += _guard("2x2 mesh", _check_mesh)
        failures += _guard("2x2 mesh, FSDP", _check_fsdp)
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(
        {"failures": failures, "bytes": sent}))
    dist.destroy_process_group()


def _guard(name: str, check, *args) -> list[str]:
    try:
        check(*args)
        return []
    except Exception:
        return [f"rank {dist.get_rank()}, {name}: {traceback.format_exc()}"]


# ---- the checks, run on every rank ---------------------------------------------------------
@functools.cache
def _module(cell: str):
    """One module and its SequenceParallel per cell and process (building them is most
    of a case's time)."""
    torch.manual_seed(0)  # the same parameters on every rank and in the reference
    m = helpers.small(cell).module("auto", dtype=torch.float64)
    return m, SequenceParallel(m, block=4)  # P = 2: blocks of 4 and 2 steps per slice


def _real(v: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(v) if v.is_complex() else v


def _weights(outs: dict, seed: int = 3) -> dict:
    """The weights of a random linear loss, for the whole sequences' values."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(_real(v).shape, generator=gen, dtype=torch.float64)
            for k, v in sorted(outs.items())}


def _dot(values: dict, weights: dict):
    return sum((_real(v) * weights[k]).sum() for k, v in values.items())


def _leaves(values: dict | None) -> dict | None:
    return None if values is None else {k: v.detach().clone().requires_grad_()
                                        for k, v in values.items()}


def _case(cell: str, packed: bool, given: bool, T: int):
    m, _ = _module(cell)
    xs = helpers.random_inputs(m, 1 if packed else 2, T, **helpers.MATRIX_TRANSFORMS.get(cell, {}))
    s0 = helpers.random_state(m, len(OFFSETS) - 1 if packed else 2) if given else None
    call = {"cu_seqlens": torch.tensor(OFFSETS)} if packed else {}
    return m, xs, s0, call


# (cell, packed, given state, T): dense without a state at 2 T, for the bytes at 2 T
CASES = [(c, packed, given, OFFSETS[-1] * (1 if packed or given else 2)) for c in CELLS
         for packed in (False, True) for given in (False, True)]


def _reference(cell: str, packed: bool, given: bool, T: int) -> dict:
    """One process on the whole sequences: outputs, final states, the loss's weights and
    its gradients (computed once, in the test's process, for every rank to read)."""
    m, xs, s0, call = _case(cell, packed, given, T)
    x_ref, s_ref = _leaves(xs), _leaves(s0)
    y, final = m(**x_ref, state=s_ref, **call)
    y = helpers._as_dict(m, y)
    wy, wf = _weights(y), _weights(final, seed=4)
    grads = _grads(_dot(y, wy) + _dot(final, wf), m, x_ref, s_ref)
    detached = {k: v.detach() for k, v in y.items()}
    return {"y": detached, "final": {k: v.detach() for k, v in final.items()}, "wy": wy,
            "wf": wf, **dict(zip(["x", "s", "p"], grads))}


def _check_case(cell: str, packed: bool, given: bool, T: int, sent: dict, want: dict):
    """This rank's slice; the loss of the whole is the sum of the ranks' losses."""
    m, xs, s0, call = _case(cell, packed, given, T)
    rank, world = dist.get_rank(), dist.get_world_size()
    part = slice(rank * T // world, (rank + 1) * T // world)
    x_r, s_r = _leaves({k: v[:, part] for k, v in xs.items()}), _leaves(s0)
    sp = _module(cell)[1]
    before = dict(sp.bytes_sent)
    y_r, final_r = sp(**x_r, state=s_r, **call)
    y_r = helpers._as_dict(m, y_r)
    loss = _dot(y_r, {k: w[:, part] for k, w in want["wy"].items()})
    loss = loss + (_dot(final_r, want["wf"]) if rank == 0 else 0)
    got_x, got_s, got_p = _grads(loss, m, x_r, s_r)
    got_p, got_s = _summed(got_p), _summed(got_s)  # the ranks' shares of replicated values
    _close("output", y_r, {k: v[:, part] for k, v in want["y"].items()})
    _close("final state", final_r, want["final"])
    _close("input gradient", got_x, {k: v[:, part] for k, v in want["x"].items()})
    _close("initial-state gradient", got_s, want["s"])
    _close("parameter gradient", got_p, want["p"])
    sent[f"{cell} {'cu_seqlens' if packed else 'dense'} T={T} state={given}"] = _since(
        before, sp.bytes_sent)


def _since(before: dict, now: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in now.items()}


def _grads(loss, m, xs: dict, s0: dict | None):
    """The gradients of the inputs, the initial states and the parameters (0 if unused)."""
    named = [("x", xs), ("s", s0 or {}), ("p", dict(m.named_parameters()))]
    flat = [(g, k, v) for g, d in named for k, v in d.items()]
    found = torch.autograd.grad(loss, [v for _, _, v in flat], allow_unused=True)
    out = {g: {} for g, _ in named}
    for (g, k, v), d in zip(flat, found):
        out[g][k] = torch.zeros_like(v) if d is None else d
    return out["x"], out["s"], out["p"]


def _summed(grads: dict) -> dict:
    """Summed over the ranks (copies: autograd may return views of one tensor)."""
    out = {k: v.contiguous().clone() for k, v in grads.items()}
    for v in out.values():
        dist.all_reduce(v)
    return out


def _close(what: str, got: dict, want: dict):
    assert set(got) == set(want), f"{what}: {sorted(got)} != {sorted(want)}"
    for k in want:
        err = (got[k].detach() - want[k].detach()).abs().max().item()
        assert err <= TOL, f"{what} {k}: max difference {err:.3g} > {TOL}"


def _check_bytes(sent: dict):
    """The buffers each rank hands to the collectives: the formula, whatever T (dense:
    T and 2 T). Packed (OFFSETS), the rank with most sequences touches 2 of the 3 (P = 2
    and 4), and the final state's adjoints are reduced over the 3."""
    T = OFFSETS[-1]
    for cell, (phi, state) in SUMMARY.items():
        scalars = 2 if cell == "lru" else 1
        dense = {"forward": 2 * (phi + state) * scalars * 8,
                 "backward": 2 * 2 * state * scalars * 8}
        packed = {"forward": 2 * (phi + state) * scalars * 8,
                  "backward": (2 + 3) * state * scalars * 8}
        for key, want in ((f"dense T={T} state=True", dense),
                          (f"dense T={2 * T} state=False", dense),
                          (f"cu_seqlens T={T} state=True", packed),
                          (f"cu_seqlens T={T} state=False", packed)):
            got = sent[f"{cell} {key}"]
            assert got == want, f"{cell} {key}: sent {got}, the formula says {want}"


LEAKY = """
cell leaky(N = 4):
    input x[N], g[N]
    param h0[N] ~ normal(0, 1)
    state h[N] = h0
    h[n] <- sigmoid(g[n]) * h[n] + x[n]
    out y[n] = h[n]
"""


def _check_learned_init():
    """A state initialized from a param: the param's gradient through the initial state
    is rank 0's; every rank has one (zeros elsewhere), so that DDP and FSDP reduce it."""
    torch.manual_seed(0)
    m = reclang.loads(LEAKY).module("scan", dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x, g, w = (torch.randn(2, 8, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    y, final = m(x=x, g=g)
    ((y * w).sum() + final["h"].sum()).backward()
    want = m.h0.grad.clone()
    m.zero_grad(set_to_none=True)
    part = slice(4 * dist.get_rank(), 4 * dist.get_rank() + 4)
    y_r, final_r = SequenceParallel(m)(x=x[:, part], g=g[:, part])
    ((y_r * w[:, part]).sum() + (final_r["h"].sum() if dist.get_rank() == 0 else 0)).backward()
    assert m.h0.grad is not None, "no gradient of h0 on this rank"
    _close("gradient of h0", _summed({"h0": m.h0.grad}), {"h0": want})


def _check_autocast():
    """Under bf16 autocast the module computes in float32 and returns float32 states;
    so does the combination of the summaries (DeltaNet's Φ S is a matmul)."""
    torch.manual_seed(0)
    m = helpers.small("gated_delta_net").module("auto")
    xs = helpers.random_inputs(m, 2, 12, **helpers.MATRIX_TRANSFORMS["gated_delta_net"])
    xs = {k: v.float() for k, v in xs.items()}
    rank, sp = dist.get_rank(), SequenceParallel(m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, final = m(**xs)
        y_r, final_r = sp(**{k: v[:, 6 * rank:6 * rank + 6] for k, v in xs.items()})
    assert y_r.dtype == y.dtype == torch.bfloat16 and final_r["S"].dtype == torch.float32
    err = (final_r["S"] - final["S"]).abs().max().item()
    assert err < 1e-5, f"final state: {err:.3g} from one process under autocast"


def _check_mesh():
    """A 2 x 2 mesh (data x sequence): each data replica holds 2 of 4 sequences, split
    across its sequence group; the gradients summed over the whole mesh are the whole's."""
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "sp"))
    dp, sp_rank = mesh["dp"].get_local_rank(), mesh["sp"].get_local_rank()
    m = _module("gated_delta_net")[0]
    xs = helpers.random_inputs(m, 4, 12, **helpers.MATRIX_TRANSFORMS["gated_delta_net"])
    s0 = helpers.random_state(m, 4)
    x_ref, s_ref = _leaves(xs), _leaves(s0)
    y, final = m(**x_ref, state=s_ref)
    wy, wf = torch.randn(y.shape, dtype=torch.float64), _weights(final)
    want_x, want_s, want_p = _grads((y * wy).sum() + _dot(final, wf), m, x_ref, s_ref)
    rows, steps = slice(2 * dp, 2 * dp + 2), slice(6 * sp_rank, 6 * sp_rank + 6)
    x_r, s_r = _leaves({k: v[rows, steps] for k, v in xs.items()}), _leaves(
        {k: v[rows] for k, v in s0.items()})
    y_r, final_r = SequenceParallel(m, group=mesh["sp"].get_group())(**x_r, state=s_r)
    loss = (y_r * wy[rows, steps]).sum()
    loss = loss + (_dot(final_r, {k: w[rows] for k, w in wf.items()}) if sp_rank == 0 else 0)
    got_x, got_s, got_p = _grads(loss, m, x_r, s_r)
    _close("output", {"o": y_r}, {"o": y[rows, steps]})
    _close("final state", final_r, {k: v[rows] for k, v in final.items()})
    _close("input gradient", got_x, {k: v[rows, steps] for k, v in want_x.items()})
    _close("parameter gradient", _summed(got_p), want_p)  # over the whole mesh
    s_sum = {k: v.contiguous().clone() for k, v in got_s.items()}
    for v in s_sum.values():  # the initial states: over the sequence group only
        dist.all_reduce(v, group=mesh["sp"].get_group())
    _close("initial-state gradient", s_sum, {k: v[rows] for k, v in want_s.items()})


class _Model(torch.nn.Module):
    """A linear layer, then a sequence-parallel Mamba (S6) layer."""

    def __init__(self, group):
        super().__init__()
        self.inp = torch.nn.Linear(3, 3, dtype=torch.float64)
        self.cell = SequenceParallel(helpers.small("mamba_s6").module(
            "auto", dtype=torch.float64), group=group)

    def forward(self, x, state=None):
        return self.cell(x=self.inp(x), state=state)


def _check_fsdp():
    """fully_shard on the 2 x 2 mesh (replicated across data, sharded across sequence)
    around a model with a sequence-parallel cell: outputs and gradients as one process
    (FSDP averages the gradients over the 4 ranks); then decoding with `step`, which
    gathers the sharded parameters itself."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "sp"))
    dp, sp_rank = mesh["dp"].get_local_rank(), mesh["sp"].get_local_rank()
    torch.manual_seed(0)
    model = _Model(mesh["sp"].get_group())
    whole = copy.deepcopy(model)
    whole.cell = whole.cell.module  # one process: the module itself on the whole sequences
    fully_shard(model, mesh=mesh)
    x = torch.randn(4, 12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x_ref = x.clone().requires_grad_()
    y, final = whole(x_ref)
    wy = torch.randn(y.shape, dtype=torch.float64)
    want = torch.autograd.grad((y * wy).sum() + final["s"].sum(), [x_ref, *whole.parameters()])
    rows, steps = slice(2 * dp, 2 * dp + 2), slice(6 * sp_rank, 6 * sp_rank + 6)
    x_r = x[rows, steps].clone().requires_grad_()
    y_r, final_r = model(x_r)
    ((y_r * wy[rows, steps]).sum() + (final_r["s"].sum() if sp_rank == 0 else 0)).backward()
    _close("output", {"y": y_r}, {"y": y[rows, steps]})
    _close("final state", final_r, {"s": final["s"][rows]})
    _close("input gradient", {"x": x_r.grad}, {"x": want[0][rows, steps]})
    names = [n for n, _ in whole.named_parameters()]  # the same order, one prefix less
    got = {n: p.grad.full_tensor() for n, p in zip(names, model.parameters())}
    _close("parameter gradient", got, {n: g / 4 for n, g in zip(names, want[1:])})
    x_t = whole.inp(torch.randn(2, 3, dtype=torch.float64)).detach()
    decoded = model.cell.step(x=x_t, state=final_r)  # outside the forward fully_shard hooks
    expected = whole.cell.step(x=x_t, state=final_r)  # unsharded
    _close("step output", {"y": decoded[0]}, {"y": expected[0]})
    _close("step state", decoded[1], expected[1])
