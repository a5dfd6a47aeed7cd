"""What an `auto` module runs on CPU tensors, per size: the first eager call of each
bucket (the inputs' device and dtype, B and T rounded up to powers of two, whether
autograd records the call) times every backend the plan proves on the call's own
inputs, cut to at most ELEMENTS of them, and the fastest runs that bucket from then on.
The choice is kept per machine (store.py), so a later process reads it instead.

The cap, ELEMENTS of the inputs (16 MiB of float32, beyond the caches of the CPUs
measured): a diagonal cell at B = 8, D = 512 is measured on 1024 steps, a matrix cell
at H = 4, K = V = 64 on 512. Measured on fewer steps, whose tensors stay in the cache,
the compiled loop ran HGRN's forward at 0.01-0.016 ms a step against 0.03 from 1024
steps on, where the loop beat it (docs/benchmarks.md; benchmarks/cpu.py `--only auto`
prints the backends' times at T = 4096 beside auto's pick). Each backend runs once
unmeasured (generating and compiling its code, touching its memory), then up to REPEAT
times (`seconds`: the CPU time with one intra-op thread, else the wall clock). Backends
within CLOSE of the fastest are timed again on twice the steps, up to the call's T,
until one is ahead by more or T is reached: minGRU's compiled loop overtakes the loop
only past 2048 steps. At worst that is REPEAT + 1 calls of the call's own size per
backend still close, and about as much again in the shorter rounds.

Nothing is measured, and the static ranking (cost/__init__.py) decides, when:
RECLANG_AUTO_MEASURE=0 (as the test suite pins it: deterministic choices); inside
torch.compile, torch.jit, torch.func transforms, or on tensor subclasses (FakeTensor,
DTensor: FSDP's parameters); when torch.distributed is initialized (ranks timing apart
could run different backends, and a measured backward would fire DDP's and FSDP's
hooks); with `lengths` or `cu_seqlens`. Measuring leaves the call's results as they
are: it runs on copies, with the caller's RNG state restored, computes gradients with
`torch.autograd.grad` (no parameter's `.grad` is touched), and saves its tensors
outside any saved-tensor hooks (activation checkpointing's)."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass, field

import torch

from .. import config
from . import cpu_choice, store

# newton is left out: its time depends on the values (its iterations), not the shapes,
# and its results equal the loop's within a tolerance, not a rounding
CANDIDATES = ("chunk", "cpu", "scan", "fft", "sequential")
ELEMENTS = 2 ** 22  # of the inputs of a measured call at most: T is cut to fit ...
MIN_T = 64          # ... but not below MIN_T steps (nor above the call's T)
REPEAT = 2          # timed runs of a backend, the second only if it may be the fastest
CLOSE = 1.15        # backends within this factor of the fastest are timed on more steps


def seconds(backend: str, steps: int, run) -> float:
    """The time of one run() (backend and steps: for a test's fake timer): with one
    intra-op thread the process's CPU time, which leaves out the waits for a core that
    other processes cause (every backend then runs on that one thread, the compiled loop
    too); with more, the wall clock, as CPU time would add the threads up."""
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    start = clock()
    run()
    return clock() - start


TIMER = seconds


@dataclass(frozen=True)
class Choice:
    backend: str
    why: str
    times: dict = field(default_factory=dict)  # backend -> seconds of a measured call

    def describe(self) -> str:
        times = ", ".join(f"{b} {t * 1e3:.1f} ms" for b, t in
                          sorted(self.times.items(), key=lambda bt: bt[1]))
        return f"{self.backend} ({self.why}{': ' + times if times else ''})"


def candidates(cell, compiled: bool | None = None) -> tuple[str, ...]:
    """The backends `auto` may run on CPU tensors: those the plan proves (`Cell.proves`);
    `compiled`: whether the compiled cpu loop is one (None: RECLANG_AUTO_COMPILED)."""
    compiled = config.auto_compiled() if compiled is None else compiled
    return tuple(b for b in CANDIDATES if (compiled or b != "cpu") and cell.proves(b))


def pow2(n: int) -> int:
    """n rounded up to a power of two."""
    return 1 << max(0, n - 1).bit_length()


def cell_key(cell, chunk_size: int | None) -> str:
    """The cell's name and a digest of what its generated code depends on."""
    spec = json.dumps([cell.ir.source.text, sorted(cell.hypers.items()), chunk_size])
    return f"{cell.name}-{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


def bucket_key(cell: str, names: tuple, x: torch.Tensor, backward: bool) -> str:
    """The bucket of a call whose first input is `x` [B, T, ...], among `names`."""
    return "/".join([cell, x.device.type, str(x.dtype).removeprefix("torch."),
                     f"B{pow2(x.shape[0])}", f"T{pow2(x.shape[1])}",
                     "fwd+bwd" if backward else "fwd", ",".join(names)])


def traced(tensors) -> bool:
    """Whether the call runs where timing it would be wrong or unsafe (module doc)."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch._C._are_functorch_transforms_active()):
        return True
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return True
    return any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in tensors)


class AutoChoice:
    """An `auto` module's choices on CPU tensors, per bucket, and the generated code of
    each candidate (made when first run). Pickles as the spec: the choices are the
    store's to keep."""

    def __init__(self, cell, chunk_size: int | None):
        self.cell, self.chunk_size = cell, chunk_size
        backend, why = cpu_choice(cell)
        self.static = Choice(backend, f"the static ranking: {why}")
        self.names = candidates(cell)
        self.key = cell_key(cell, chunk_size)
        self.chosen: dict[str, Choice] = {}
        self._code: dict[str, object] = {}

    def __reduce__(self):  # the cell (pickled by its spec), not the generated modules
        return AutoChoice, (self.cell, self.chunk_size)

    def code(self, module, inputs: dict, state: dict | None):
        """The generated module that runs this call."""
        return self.generated(module, self.choose(module, inputs, state).backend)

    def generated(self, module, backend: str):
        if backend == module.backend:
            return module._generated
        if backend not in self._code:
            self._code[backend] = self.cell._generated(backend, self.chunk_size)[1]
        return self._code[backend]

    def choose(self, module, inputs: dict, state: dict | None) -> Choice:
        tensors = [*inputs.values(), *(state or {}).values(), *module.parameters()]
        if traced(tensors) or len(self.names) < 2 or not config.auto_measure():
            return self.static
        xs, batch, _ = module._check_inputs(inputs, sequence=True)  # errors as without auto
        module._check_state_arg(state, batch)
        backward = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        key = bucket_key(self.key, self.names, xs[0], backward)
        if key not in self.chosen:
            entry = store.lookup(key)
            if entry is not None and entry["backend"] in self.names:  # the names are in the key
                self.chosen[key] = Choice(entry["backend"], "measured before on this machine",
                                          entry["times"])
            else:
                self.chosen[key] = self._measure(module, inputs, state or {}, backward, key)
        return self.chosen[key]

    def _measure(self, module, inputs: dict, state: dict, backward: bool, key: str) -> Choice:
        """Times the candidates on the capped steps, then those within CLOSE of the
        fastest again on twice as many, up to the call's T, until one is clear."""
        B, T = next(iter(inputs.values())).shape[:2]
        per_step = B * sum(v[0, 0].numel() for v in inputs.values())
        steps, names, lengths = min(T, max(MIN_T, ELEMENTS // per_step)), self.names, []
        with torch.random.fork_rng(devices=[]), \
                torch.autograd.graph.saved_tensors_hooks(_same, _same):
            while True:
                times = self._times(module, inputs, state, backward, names, steps)
                lengths.append(steps)
                names = tuple(b for b in names if times[b] <= CLOSE * min(times.values()))
                if len(names) < 2 or steps == T:
                    break
                steps = min(T, 2 * steps)
        best = min(times, key=times.get)
        store.save(key, {"backend": best, "times": times})
        return Choice(best, f"measured at B = {B}, T = {', '.join(map(str, lengths))}", times)

    def _times(self, module, inputs: dict, state: dict, backward: bool, names: tuple,
               steps: int) -> dict:
        """Each backend's time of a call on the first `steps` steps of copies."""
        xs = {k: _copy(v[:, :steps], backward) for k, v in inputs.items()}
        s0 = {k: _copy(v, backward) for k, v in state.items()}
        times = {}
        for backend in names:
            run = functools.partial(_once, module, self.generated(module, backend), xs, s0,
                                    backward)
            run()  # generates and compiles the code, touches its memory
            times[backend] = TIMER(backend, steps, run)
            for _ in range(REPEAT - 1):
                if times[backend] < 2 * min(times.values()):  # may be the fastest
                    times[backend] = min(times[backend], TIMER(backend, steps, run))
        return times

    def describe(self) -> list[str]:
        """One line per bucket chosen so far, and the rule for the others."""
        lines = [f"{key.split('/', 1)[1].rsplit('/', 1)[0]}: {c.describe()}"
                 for key, c in self.chosen.items()]
        return lines + [f"otherwise: {self.static.backend} until measured" if
                        config.auto_measure() and len(self.names) > 1 else
                        f"always: {self.static.describe()}"]


def _copy(t: torch.Tensor, backward: bool) -> torch.Tensor:
    return t.detach().clone().requires_grad_(backward and t.requires_grad)


def _same(t):
    return t


def _once(module, code, xs: dict, state: dict, backward: bool) -> None:
    """One call on `code`, with a backward to every leaf that requires grad."""
    with torch.set_grad_enabled(backward):
        y, _ = module._run(code.forward, xs, state or None, sequence=True)
    if not backward:
        return
    outs = list(y.values()) if isinstance(y, dict) else [y]
    loss = sum((torch.view_as_real(o) if o.is_complex() else o).sum() for o in outs)
    wrt = [t for t in (*module.parameters(), *xs.values(), *state.values()) if t.requires_grad]
    if loss.requires_grad:
        torch.autograd.grad(loss, wrt, allow_unused=True)


def explain(cell, chunk_size: int | None = None) -> list[str]:
    """What `auto` runs on CPU tensors and why, for `reclang inspect`: the candidates,
    the measurements this machine keeps for the cell, and the static rule."""
    names, key = candidates(cell), cell_key(cell, chunk_size)
    backend, why = cpu_choice(cell)
    if len(names) < 2:
        return [f"{backend}, the one backend the plan proves"]
    if not config.auto_measure():
        return [f"{backend} (RECLANG_AUTO_MEASURE=0: the static ranking: {why})"]
    lines = [(f"the fastest of {', '.join(names)}, measured on the first call of each size "
              "(B, T rounded up to powers of two, backward or not)"),
             (f"where nothing is measured (torch.compile, torch.func, distributed, lengths): "
              f"{backend}, the static ranking: {why}")]
    for bucket, entry in sorted(store.entries(key + "/").items()):
        shape = bucket.split("/", 1)[1].rsplit("/", 1)[0]
        lines.append(f"measured here, {shape}: "
                     f"{Choice(entry['backend'], 'fastest', entry['times']).describe()}")
    return lines
