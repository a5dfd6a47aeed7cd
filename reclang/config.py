"""Every environment setting reclang reads, and the limits of the language, in one place.

RECLANG_CACHE       where generated sources are written (default ~/.cache/reclang; when the
                    home folder cannot be written, reclang-cache-<uid> in the temporary folder)
RECLANG_CACHE_MAX   how many generated files the cache keeps, the most recently used (1000)
RECLANG_DEBUG       at load time, print: 2 the IR, 3 also the plan, 4 also the generated
                    source (when a module is built), 5 also every rewrite rule that fires
RECLANG_AUTO_COMPILED  whether `auto` may choose the compiled cpu backend for CPU tensors
                    (1, the default; 0: PyTorch backends only, as the test suite pins it:
                    compiling every cell it builds would take minutes)
RECLANG_AUTO_MEASURE  whether `auto` times the backends on CPU tensors, per size, and keeps
                    the fastest (1, the default; 0: the static ranking alone, neither
                    measured nor read from the cache, as the test suite pins it:
                    deterministic choices; reclang/cost/auto.py)
RECLANG_CPU_BUFFERS  the bytes of freed output buffers the cpu backend keeps mapped for
                    its next calls (1 GiB; 0: none; reclang/runtime/cpu_buffers.py)
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

from .errors import RecError

VERSION = "0.1.0"  # the package's version (reclang.__version__), in generated headers


def cache_dir() -> Path:
    """The cache folder, created private (0700). Generated code is checked against the
    compiler's text before it runs, but triton and tracebacks read the files, so a folder
    of another user, or one that others can write, is refused."""
    explicit = os.environ.get("RECLANG_CACHE")
    if explicit:
        return _private_dir(Path(explicit))
    # a read-only home: a folder of this user's (by uid; none on Windows) in the temporary one
    fallback = Path(tempfile.gettempdir()) / f"reclang-cache-{getattr(os, 'getuid', str)()}"
    return _private_dir(Path.home() / ".cache" / "reclang", fallback)


def cache_max_files() -> int:
    return _int("RECLANG_CACHE_MAX", 1000)


def debug_level() -> int:
    return _int("RECLANG_DEBUG", 0)


def auto_compiled() -> bool:
    return _int("RECLANG_AUTO_COMPILED", 1) != 0


def auto_measure() -> bool:
    return _int("RECLANG_AUTO_MEASURE", 1) != 0


def cpu_buffers() -> int:
    return _int("RECLANG_CPU_BUFFERS", 1 << 30)


def _private_dir(path: Path, fallback: Path | None = None) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        if fallback is not None:
            return _private_dir(fallback)
        raise RecError(f"cannot create the cache folder {path}: {err.strerror}; set "
                       "RECLANG_CACHE to a folder of your own") from None
    if os.name != "posix":  # no owners and modes to check (Windows)
        return path
    uid, info = os.getuid(), path.stat()
    advice = "; remove it, or set RECLANG_CACHE to a folder of your own"
    # the link too: someone else's link in /tmp may point to a folder of yours
    owner = next((i.st_uid for i in (path.lstat(), info) if i.st_uid != uid), None)
    if owner is not None:
        raise RecError(f"the cache folder {path} belongs to user id {owner}, not to you "
                       f"({uid}): reclang does not trust code written there{advice}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RecError(f"the cache folder {path} can be written by other users (mode "
                       f"{stat.S_IMODE(info.st_mode):o}): reclang does not trust code written "
                       f"there; chmod 700 it{advice.replace('; remove it,', ',')}")
    return path


def _int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, str(default)))
    except ValueError:
        return default


# ---- the limits of the language (docs/guarantees.md explains each): a spec past one
# gets a RecError at the place that passes it, never a crash, a hang or an exhausted
# memory; within them, checking and compiling a spec takes time about linear in its size
NAME_LENGTH = 100          # characters in a name: generated file names stay valid
DEPTH = 100                # nesting of one expression (brackets, operators, calls)
UNROLLED = 1000            # statements of the for blocks, unrolled (see ast_to_ir/unroll.py)
CHAIN = 300                # operations a value passes through, across the lets it reads
NUMBER = sys.float_info.max  # largest constant magnitude: finite in float64
INDICES = 26               # distinct indices in one statement (einsum letters)
LAG = 4096                 # the most steps lag(e, k) looks back
ELEMENTS = 2 ** 31 - 1     # elements of one tensor or one statement's index space (int32)
