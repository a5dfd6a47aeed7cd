"""Compiled C++ kernels for the CPU (the cpu backend, backends/cpu_loop.py): built once per
source, machine and compiler, cached, and loaded with ctypes.

Why not torch.utils.cpp_extension.load_inline: it prepends <torch/extension.h> and pybind
to every module, 30-60 s of compiling on a 2-core machine per cell, where the kernels here
need <cmath> alone and take well under a second (docs/backends.md). They take raw
pointers and sizes (`extern "C"`), so ctypes calls them without any binding.

Trust, as for the generated sources (reclang/generated.py): only text the compiler
produced is compiled, and a cached build is trusted only after its hash is checked.
A build is `<cache>/cpp/<stem>_<key>.so`, key = sha256 of the source, the compiler's
identity and flags and the machine's CPU flags (the code is compiled for this CPU:
-march=native). Beside it, `<stem>_<key>.sha256` records the sha256 of the library the
compiler wrote. A library whose bytes do not match the record (truncated, planted,
rebuilt by something else) or that has no record is compiled again. Builds are written
to a temporary file and renamed, so processes building the same kernel never see a
half-written one. The cache folder is private (0700, reclang/config.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from .. import config
from .files import write_atomically

# -fno-trapping-math: no FP exception is ever observed (the values are IEEE's either way);
# without it GCC keeps a select or a division under a condition as a branch, and the
# step's loop stayed scalar on AVX2 (indrnn's relu, rwkv4, slstm; docs/backends.md)
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
         "-shared", "-fPIC", "-std=c++17")
COMPILE_TIMEOUT_S = 300
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}  # key -> the library, once per process


class CompileError(RuntimeError):
    """The C++ compiler failed on generated code (a bug of reclang: the message has its
    output)."""


def compiler() -> str | None:
    """The C++ compiler: $CXX, else g++ or c++ on the PATH (None: there is none)."""
    named = os.environ.get("CXX")
    if named:
        return shutil.which(named)
    return shutil.which("g++") or shutil.which("c++")


def missing_compiler() -> str:
    """Why the cpu backend cannot compile its kernels here ("" when it can)."""
    if compiler() is None:
        return ("needs a C++ compiler (g++, or the one $CXX names) to build its kernels; "
                "none found, so `auto` runs the PyTorch loop")
    return ""


def build(source: str, stem: str) -> ctypes.CDLL:
    """The compiled library of a C++ source, built at most once per key (see above)."""
    cxx = compiler()
    if cxx is None:
        raise CompileError(missing_compiler())
    key = _key(source, cxx)
    with _lock:
        if key not in _loaded:
            _loaded[key] = ctypes.CDLL(str(_library(source, f"{stem}_{key[:16]}", cxx)))
    return _loaded[key]


def _key(source: str, cxx: str) -> str:
    parts = [source, cxx, " ".join(FLAGS), _version(cxx), _cpu_flags()]
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


@functools.cache  # per process: a compiler or CPU that changes under it is not looked for
def _version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.cache
def _cpu_flags() -> str:
    """The CPU's feature flags (-march=native compiles for them), where Linux says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    return ""


def _library(source: str, name: str, cxx: str) -> Path:
    """The path of a library whose bytes match its record; compiled when none does."""
    directory = config.cache_dir() / "cpp"
    directory.mkdir(mode=0o700, exist_ok=True)
    path, record = directory / f"{name}.so", directory / f"{name}.sha256"
    with contextlib.suppress(OSError):
        if record.read_text().strip() == _digest(path):
            return path
    data = _compile(source, name, cxx)
    write_atomically(directory, record, hashlib.sha256(data).hexdigest().encode())
    write_atomically(directory, path, data)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compile(source: str, name: str, cxx: str) -> bytes:
    """The bytes of the library the compiler builds from `source`, in a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="reclang-cpp-") as scratch:
        cpp, so = Path(scratch, f"{name}.cpp"), Path(scratch, f"{name}.so")
        cpp.write_text(source, encoding="utf-8")
        try:
            done = subprocess.run([cxx, *FLAGS, str(cpp), "-o", str(so)], capture_output=True,
                                  text=True, check=False, timeout=COMPILE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as err:
            raise CompileError(f"cannot run the C++ compiler {cxx}: {err}") from None
        if done.returncode != 0:
            raise CompileError(f"{cxx} failed on the generated kernel {name} (a bug of "
                               f"reclang; please report it):\n{done.stderr[-4000:]}")
        return so.read_bytes()


