"""How a form is run, apart from what it computes (Halide's lesson): chunk lengths,
segments, tiles. One frozen dataclass per lowering; a schedule changes the order of the
work and the sizes of its pieces, never the result. `reclang inspect` prints it, the
generated file's header records it, `cell.module(backend, schedule=...)` takes one.
No other module holds such constants."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RecError


@dataclass(frozen=True)
class Schedule:
    """A lowering with nothing to choose (the loop, the scan, the FFT)."""

    def describe(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({fields})"


@dataclass(frozen=True)
class ChunkSchedule(Schedule):
    """The chunkwise form: `chunk` steps per chunk (matmuls of C x C scores), run in
    segments of `segment` steps (a multiple of the chunk: bounds the C x C x K decays
    held at once)."""

    chunk: int = 64
    segment: int = 1024


@dataclass(frozen=True)
class TritonChunkSchedule(ChunkSchedule):
    """The Triton matrix-state kernels: `chunk` steps per chunk, a power of 2 of at
    least 16 (tl.dot's smallest size)."""

    def __post_init__(self):
        c = self.chunk
        if c < 16 or c & (c - 1):
            raise RecError(f"chunk_size={c}: the triton backend's chunk kernels take a "
                           "power of 2 of at least 16 steps (tl.dot's smallest size)")
