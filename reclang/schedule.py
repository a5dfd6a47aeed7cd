"""How a form is run, apart from what it computes (Halide's lesson): chunk lengths,
segments, tiles, warps. One frozen dataclass per lowering; a schedule changes the order
of the work and the sizes of its pieces, never the result. `reclang inspect` prints it,
the generated file's header records it (`# schedule: ChunkSchedule(chunk=64, ...)`, so
it is part of the generated file's hash, the cache key), and
`cell.module(backend, schedule=...)` takes one. Nonsense values are a RecError when the
schedule is made. Only limits of what a lowering can run at all live elsewhere
(reclang/config.py and the backends' refusals)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import RecError


@dataclass(frozen=True)
class Schedule:
    """A lowering's choices; this base has none."""

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise RecError(f"{type(self).__name__}: {f.name}={value!r} must be a "
                               "positive integer" + (" or None" if f.default is None else ""))
        self.check()

    def check(self) -> None:
        """Checks of the values beyond their being positive integers."""

    def describe(self) -> str:
        return repr(self)


@dataclass(frozen=True)
class LoopSchedule(Schedule):
    """The sequential loop: its one policy (hoist every state-free value that is not
    larger than what it is computed from) has no setting."""


@dataclass(frozen=True)
class FftSchedule(Schedule):
    """The FFT convolution: nothing to choose (torch.fft picks its own sizes)."""


@dataclass(frozen=True)
class ScanSchedule(Schedule):
    """The chunked scan (reclang/runtime/scan.py): `chunk` steps per chunk of
    linear_scan; None: about √T (`chunk_length`), which balances the chunks' batched
    steps against the pass over their boundaries."""

    chunk: int | None = None


@dataclass(frozen=True)
class ChunkSchedule(Schedule):
    """The chunkwise form: `chunk` steps per chunk (matmuls of C x C scores), run in
    segments of `segment` steps (rounded down to whole chunks, at least one: bounds the
    C x C x K decays held at once)."""

    chunk: int = 64
    segment: int = 1024


def _power_of_2(schedule, name: str, least: int, why: str) -> None:
    value = getattr(schedule, name)
    if value is not None and (value < least or value & (value - 1)):
        raise RecError(f"{type(schedule).__name__}: {name}={value}: {why} take a power of 2 "
                       f"of at least {least}")


@dataclass(frozen=True)
class TritonScanSchedule(Schedule):
    """The triton diagonal and gated scans: one program per (sequence, `block_s`
    channels) walks time `block_t` steps at a time (each at most the next power of 2 of
    the channels and steps: 2048 values keep loads in flight and leave B·S/32 programs to
    fill the GPU). The gated scan's backward holds a dozen such tiles: `backward_warps`
    8, or it needs all 255 registers per thread and spills (sm_90)."""

    block_t: int = 64
    block_s: int = 32
    backward_warps: int = 8

    def check(self) -> None:
        for name in ("block_t", "block_s", "backward_warps"):
            _power_of_2(self, name, 1, "the scan kernels")


@dataclass(frozen=True)
class TritonMatrixSchedule(Schedule):
    """The triton matrix-state kernels: `chunk` steps per chunk of the chunkwise
    kernels (a power of 2 of at least 16: tl.dot's smallest size), `warps` per chunk
    kernel; the recurrent kernel keeps a [`block_k`, `block_v`] tile of the state per
    program (all the keys when a readout is fed back), with one warp per
    `values_per_warp` values of it (between 4 and 16 warps)."""

    chunk: int = 64
    warps: int = 8
    block_k: int = 128
    block_v: int = 32
    values_per_warp: int = 512

    def check(self) -> None:
        c = self.chunk
        if c < 16 or c & (c - 1):
            raise RecError(f"chunk_size={c}: the triton backend's chunk kernels take a "
                           "power of 2 of at least 16 steps (tl.dot's smallest size)")
        for name in ("warps", "block_k", "block_v"):
            _power_of_2(self, name, 1, "the matrix kernels")


@dataclass(frozen=True)
class FusedLoopSchedule(Schedule):
    """The triton fused loop: `block_b` sequences per program (tl.dot needs at least
    16 rows), `warps` per program (None: 4 up to 32 units per head, else 8: with 4 the
    step's temporaries spill from N = 64 on, sm_90)."""

    block_b: int = 16
    warps: int | None = None

    def check(self) -> None:
        _power_of_2(self, "block_b", 16, "the fused loop's tl.dot products")
        _power_of_2(self, "warps", 1, "Triton programs")


JACOBIANS = ("exact", "diagonal")
DERIVATIVES = ("sympy", "reverse")


@dataclass(frozen=True)
class NewtonSchedule(Schedule):
    """The newton backend (reclang/runtime/newton.py): at most `max_iter` Newton
    iterations (then the steps from the first unconverged one run one by one), stopping
    when no step moves by more than `tol`·(1 + |h_t|) (None: eps^(3/4) of the dtype).
    `jacobian`: "exact" (the structure the plan proves: diagonal, block-diagonal or
    dense) or "diagonal" (quasi-Newton: its diagonal only; None: exact unless the dense
    blocks are too large for the scan). `damping` ≥ 0 scales the Jacobian by
    1 / (1 + damping): 0 is Newton, larger values move towards Picard iteration.
    `derivatives`: how J is found: "sympy" (its entries printed from the lane form's
    derivatives, with the step, in one pass on all tokens) or "reverse" (its rows by
    reverse mode through the step); None: sympy where the cell has a lane form.
    `rows`: with reverse mode, the Jacobian's rows found per backward pass, from one
    evaluation of the step on that many copies of all tokens: memory (rows x the step's
    activations) against the number of passes (per pass, a call of the autograd engine).
    `triton`: for a cell with a diagonal Jacobian, each iteration as one Triton kernel
    (reclang/codegen/newton_triton.py): None on CUDA tensors, True always (on the CPU
    under TRITON_INTERPRET=1), False never."""

    max_iter: int = 32
    tol: float | None = None
    jacobian: str | None = None
    damping: float = 0.0
    rows: int = 16
    derivatives: str | None = None
    triton: bool | None = None

    def __post_init__(self):
        for name in ("max_iter", "rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RecError(f"NewtonSchedule: {name}={value!r} must be a positive integer")
        if self.tol is not None and not _positive_number(self.tol):
            raise RecError(f"NewtonSchedule: tol={self.tol!r} must be a positive number or "
                           "None")
        if self.jacobian is not None and self.jacobian not in JACOBIANS:
            raise RecError(f"NewtonSchedule: jacobian={self.jacobian!r} must be one of "
                           f"{', '.join(JACOBIANS)} or None")
        if not (_positive_number(self.damping) or self.damping == 0):
            raise RecError(f"NewtonSchedule: damping={self.damping!r} must be a number ≥ 0")
        if self.derivatives is not None and self.derivatives not in DERIVATIVES:
            raise RecError(f"NewtonSchedule: derivatives={self.derivatives!r} must be one of "
                           f"{', '.join(DERIVATIVES)} or None")
        if self.triton not in (None, True, False):
            raise RecError(f"NewtonSchedule: triton={self.triton!r} must be True, False or None")


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < \
        float("inf")


@dataclass(frozen=True)
class CpuLoopSchedule(Schedule):
    """The cpu backend's compiled loop: `block_b` sequences of one head run the time
    loop together (each weight row read once for all of them, at most 16: a block's
    products and states sit on the stack, [J or S, block_b, N]), or half as many when
    the batch has fewer than `block_b` for each thread; blocks shared among `threads`
    threads (None: torch.get_num_threads() at the call). A cell without products
    (minGRU, HGRN, RG-LRU, Mamba's S6) runs its sequences one at a time: it has no weight
    to share, and fewer memory streams run faster."""

    block_b: int = 8
    threads: int | None = None

    def check(self) -> None:
        if self.block_b > 16:
            raise RecError(f"CpuLoopSchedule: block_b={self.block_b}: at most 16 sequences "
                           "run together (their products and states are on the stack)")
