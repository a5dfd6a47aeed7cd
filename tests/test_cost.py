"""`auto` on CPU tensors, chosen per size (reclang/cost/): the buckets and their keys,
the per-machine file of choices and its rejection of malformed or foreign files, the
static ranking where nothing may be measured (tracing, transforms, RECLANG_AUTO_MEASURE=0,
lengths), the candidates (the proved backends only), and a measured choice against a fake
timer, which leaves the call's results, the RNG and the caller's tensors as they are.
Nothing here asserts on a real time."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import SPECS

import reclang
from reclang.cost import auto, store


@pytest.fixture
def measuring(tmp_path, monkeypatch):
    """Measuring on, in an empty cache, with a fake timer: scan 2 s, sequential 1 s (the
    static ranking would pick scan). Returns the (backend, seconds) calls it timed."""
    monkeypatch.setenv("RECLANG_CACHE", str(tmp_path))
    monkeypatch.setenv("RECLANG_AUTO_MEASURE", "1")
    timed = []

    def fake(backend, steps, run):
        run()
        timed.append(backend)
        return {"scan": 2.0, "sequential": 1.0, "cpu": 3.0}[backend]
    monkeypatch.setattr(auto, "TIMER", fake)
    return timed


def rg_lru():
    torch.manual_seed(0)
    return reclang.load(SPECS / "rg_lru.rec", D=5)


def test_buckets_round_up_to_powers_of_two():
    assert [auto.pow2(n) for n in (1, 2, 3, 4, 5, 4096, 4097)] == [1, 2, 4, 4, 8, 4096, 8192]
    names = ("scan", "sequential")

    def key(B, T, dtype=torch.float32, backward=False, names=names):
        return auto.bucket_key("c", names, torch.zeros(B, T, 2, dtype=dtype), backward)
    assert key(5, 3000) == key(8, 4096) == "c/cpu/float32/B8/T4096/fwd/scan,sequential"
    assert len({key(8, 4096), key(9, 4096), key(8, 4097), key(8, 4096, torch.float64),
                key(8, 4096, backward=True), key(8, 4096, names=("sequential",))}) == 6


def test_the_cell_key_follows_the_spec_hypers_and_chunk_size():
    a, b = rg_lru(), reclang.load(SPECS / "rg_lru.rec", D=6)
    assert auto.cell_key(a, None) == auto.cell_key(rg_lru(), None)
    assert len({auto.cell_key(a, None), auto.cell_key(b, None), auto.cell_key(a, 32)}) == 3


def test_the_file_round_trips_and_ignores_what_is_not_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("RECLANG_CACHE", str(tmp_path))
    entry = {"backend": "scan", "times": {"scan": 0.5, "sequential": 1.5}}
    store.save("k", entry)
    (path,) = (tmp_path / "auto").glob("auto-*.json")
    assert json.loads(path.read_text())["machine"] == store.machine()
    key = store.machine()
    assert store.parse(path, key) == {"k": entry}  # read back from the file, not memory
    good = json.loads(path.read_text())
    foreign = good | {"machine": key | {"threads": key["threads"] + 1}}
    bad_entries = good | {"choices": {"a": {"backend": "fft", "times": {"scan": 1.0}},
                                      "b": {"backend": "scan", "times": {"scan": "1"}},
                                      "c": "scan", "k": entry}}
    for text in ("import os; os.system('false')", "{", '"choices"', "\xff\xfe",
                 json.dumps(good | {"format": 99}), json.dumps(foreign),
                 json.dumps(good | {"choices": []})):
        path.write_bytes(text.encode("latin-1"))
        assert store.parse(path, key) == {}, text
    path.write_text(json.dumps(bad_entries))
    assert store.parse(path, key) == {"k": entry}  # the well-formed entry alone


def test_a_measured_choice_is_the_fake_timers_fastest_and_kept(measuring):
    cell = rg_lru()
    m = cell.module("auto").double()
    assert m.backend == "scan"  # the static ranking's
    x = torch.randn(3, 7, 5, dtype=torch.float64)
    y, _ = m(x=x)
    (choice,) = m._auto.chosen.values()
    assert choice.backend == "sequential" and choice.times == {"scan": 2.0, "sequential": 1.0}
    assert measuring == ["scan"] * auto.REPEAT + ["sequential"] * auto.REPEAT
    reference = cell.module("sequential").double()
    reference.load_state_dict(m.state_dict())
    torch.testing.assert_close(y, reference(x=x)[0], rtol=0, atol=0)  # it ran sequential
    m(x=torch.randn(4, 8, 5, dtype=torch.float64))  # the same bucket: not measured again
    again = cell.module("auto").double()  # another module: the choice read from the file
    store._memory.clear()
    again(x=x)
    assert len(measuring) == 2 * auto.REPEAT
    assert next(iter(again._auto.chosen.values())).why == "measured before on this machine"
    assert "sequential (measured" in repr(m) and "otherwise: scan until measured" in repr(m)


def test_near_ties_are_timed_again_on_more_steps(measuring, monkeypatch):
    """Within CLOSE of each other on the capped steps, scan and sequential are timed on
    twice the steps, then on the call's T, where scan is ahead (as minGRU's compiled loop
    overtakes the loop only past 2048 steps)."""
    per_step = {"scan": {4: 1.0, 8: 1.01, 10: 0.9}, "sequential": {4: 0.95, 8: 1.0, 10: 1.0}}
    seen = []

    def fake(backend, steps, run):
        seen.append((backend, steps))
        return steps * per_step[backend][steps]
    monkeypatch.setattr(auto, "TIMER", fake)
    monkeypatch.setattr(auto, "MIN_T", 1)
    monkeypatch.setattr(auto, "ELEMENTS", 2 * 5 * 4)  # B = 2, D = 5: 4 steps
    m = rg_lru().module("auto")
    m(x=torch.randn(2, 10, 5))
    (choice,) = m._auto.chosen.values()
    assert choice.backend == "scan" and choice.why == "measured at B = 2, T = 4, 8, 10"
    assert sorted({s for _, s in seen}) == [4, 8, 10]


def test_measuring_leaves_the_rng_the_inputs_and_the_grads_alone(measuring):
    m = rg_lru().module("auto")
    x = torch.randn(2, 9, 5, requires_grad=True)
    before, rng = x.detach().clone(), torch.get_rng_state()
    y, _ = m(x=x)
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(x, before)
    assert all(p.grad is None for p in m.parameters()) and x.grad is None
    assert "fwd+bwd" in next(iter(m._auto.chosen))  # the measured calls ran a backward
    y.sum().backward()
    assert x.grad is not None


def test_only_proved_backends_are_measured(measuring, monkeypatch):
    lstm = reclang.load(SPECS / "lstm.rec", D=3, N=4)
    assert lstm.proves("newton") and lstm.proves("triton")
    assert auto.candidates(lstm, compiled=True) == ("cpu", "sequential")
    cell = rg_lru()
    proves = cell.proves
    monkeypatch.setattr(cell, "proves", lambda b: b != "scan" and proves(b))
    m = cell.module("auto")
    m(x=torch.randn(2, 4, 5))
    assert not measuring and not m._auto.chosen  # one candidate left: the static ranking


def test_nothing_is_measured_when_switched_off(measuring, monkeypatch, tmp_path):
    monkeypatch.setenv("RECLANG_AUTO_MEASURE", "0")
    cell = rg_lru()
    m, x = cell.module("auto"), torch.randn(2, 6, 5)
    scan = cell.module("scan")
    scan.load_state_dict(m.state_dict())
    assert torch.equal(m(x=x)[0], scan(x=x)[0])  # the static ranking's backend, every run
    assert m._auto.choose(m, {"x": x}, None).backend == "scan"
    assert not measuring and not m._auto.chosen and not (tmp_path / "auto").exists()
    assert "RECLANG_AUTO_MEASURE=0" in auto.explain(cell)[0]


def test_under_torch_compile_and_transforms_the_static_ranking_runs(measuring):
    m = rg_lru().module("auto")
    x = torch.randn(2, 6, 5)
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    compiled(x=x)
    torch.func.grad(lambda x: m(x=x)[0].sum())(x)
    torch.func.vmap(lambda x: m(x=x[None])[0])(x)
    m(x=x, lengths=torch.tensor([6, 3]))
    assert not measuring and not m._auto.chosen


def test_distributed_runs_the_static_ranking(measuring):
    """Ranks timing apart could choose different backends; DDP's hooks would fire."""
    import torch.distributed as dist
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        m = rg_lru().module("auto")
        m(x=torch.randn(2, 6, 5))
    finally:
        dist.destroy_process_group()
    assert not measuring and not m._auto.chosen


def test_inspect_and_pickling_say_and_keep_the_choice(measuring):
    cell = rg_lru()
    m = cell.module("auto")
    m(x=torch.randn(2, 6, 5))
    lines = auto.explain(cell)
    assert lines[0].startswith("the fastest of scan, sequential, measured on the first call")
    assert lines[1].startswith("where nothing is measured") and "scan, the static" in lines[1]
    assert "B2/T8/fwd+bwd: sequential (fastest: sequential 1000.0 ms, scan 2000.0 ms)" in \
        lines[2]
    old = m.__getstate__()  # as pickled before auto measured per size: no _auto
    del old["_auto"]
    earlier = reclang.RecModule.__new__(reclang.RecModule)
    earlier.__setstate__(old)
    assert earlier(x=torch.randn(2, 6, 5))[0].shape == (2, 6, 5)
    twin = copy.deepcopy(m)
    assert twin._auto.static == m._auto.static and twin(x=torch.randn(2, 6, 5))[0].shape \
        == (2, 6, 5)
