"""Loading generated code: the text the compiler produced runs, never what a file holds.

A generated source is written to `<cache>/<stem>_<hash>.py` (a real file: `@triton.jit`
reads its kernel with inspect.getsource, and tracebacks show the generated lines), but
the file is only compared with the text, and rewritten when it differs (truncated, not
UTF-8, a folder, planted). The text itself is compiled in memory, so no bytecode is
written or read, and executed in a fresh module registered in sys.modules as
`reclang_generated.<stem>_<hash>`: pickle and torch.compile find its functions by their
qualified names. linecache holds the same text, so getsource never re-reads the file.

Writes go to a unique temporary file renamed over the entry, so threads and processes
building the same cell never see a half-written one. The cache keeps the
`config.cache_max_files()` most recently used entries (see `_prune`).

Origins. Each generated statement follows a comment naming the spec line it comes from
(`# gla.rec:12: S[h, i, j] <- ...`). Loading reads those comments into a map from
generated line to spec `Loc` (see `origins`), kept per generated file, so that an
exception raised inside generated code can name the spec line (`note_origin`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import linecache
import os
import re
import stat
import sys
import threading
import time
import traceback
import types
from pathlib import Path

from . import config
from .codegen.ir_to_torch import comment
from .errors import Loc, RecError, Source, at
from .runtime.files import write_atomically

PACKAGE = "reclang_generated"
STALE_TMP_S = 3600  # a temporary file this old was left by a writer that died
ENTRY = re.compile(r"\.?\w+_[0-9a-f]{16}(\.py|\.\w+\.tmp)")  # what _prune may remove
_lock = threading.Lock()
if hasattr(os, "register_at_fork"):  # a child forked while another thread held the lock
    os.register_at_fork(after_in_child=lambda: globals().update(_lock=threading.Lock()))
_loaded: dict[tuple[str, Path], types.ModuleType] = {}  # (sha256 of a source, file) -> module
_origins: dict[str, dict[int, Loc]] = {}  # generated file -> its line -> the spec's Loc


def load_source(source: str, stem: str, spec: Source | None = None) -> types.ModuleType:
    """The module of a generated source, executed once per process and cache folder, and
    registered as `reclang_generated.<stem>_<hash>`; `stem` names the file (cell, backend).
    `spec`: the spec the source was generated from, whose lines its tracebacks name."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    name = f"{re.sub(r'[^0-9A-Za-z_]', '_', stem)}_{digest[:16]}"
    with _lock:
        path = _store(source, name + ".py")  # the cache shows what runs, even on a reuse
        if spec is not None:
            _origins[str(path)] = origins(source, spec)
        module = _loaded.get((digest, path))
        if module is None:
            with at(Loc(0, 0, spec), "loading"):  # the cell as a whole: no node runs here
                module = _execute(source, f"{PACKAGE}.{name}", path)
            _loaded[digest, path] = module
        _register(module)  # again, in case someone removed it from sys.modules
    return module


def origins(text: str, spec: Source) -> dict[int, Loc]:
    """Each generated line (1-based) that computes part of a spec statement -> where the
    statement starts in the spec. A line belongs to the nearest origin comment above it
    at its indentation or less; another comment at that indentation, or a line indented
    less, ends the comment's reach (the statement after a loop comes from no line)."""
    mark = re.compile(r"#(?: ---- | .*?: | )" + re.escape(comment(_basename(spec))) + r":(\d+):")
    found: dict[int, Loc] = {}
    reach: list[tuple[int, Loc]] = []  # (indentation, origin) of the comments in reach
    for n, line in enumerate(text.split("\n"), 1):
        body = line.lstrip()
        if not body:
            continue
        indent = len(line) - len(body)
        comments = body.startswith("#")
        while reach and (reach[-1][0] > indent or comments and reach[-1][0] == indent):
            reach.pop()
        origin = mark.match(body) if comments else None
        if origin:
            reach.append((indent, _statement_start(spec, int(origin[1]))))
        elif reach and not comments:
            found[n] = reach[-1][1]
    return found


def _basename(spec: Source) -> str:
    return spec.filename.rsplit("/", 1)[-1]


def _statement_start(spec: Source, line: int) -> Loc:
    text = spec.line(line)
    return Loc(line, len(text) - len(text.lstrip()) + 1, spec)


def origin_of(tb: types.TracebackType | None) -> Loc | None:
    """The spec location of the innermost generated line in a traceback, if any."""
    found = None
    for frame, line in traceback.walk_tb(tb):
        found = _origins.get(frame.f_code.co_filename, {}).get(line, found)
    return found


def note_origin(err: BaseException) -> None:
    """Adds `in spec.rec:12:5: <the spec line>` to an exception raised in generated code:
    as a note (Python 3.11), else as a RecError at that line, the cause it was raised
    from (3.10)."""
    loc = origin_of(err.__traceback__)
    if loc is None:
        return
    note = f"in {loc.file}:{loc}: {loc.source.line(loc.line).strip()}"
    if note in getattr(err, "__notes__", ()):
        return  # noted by an inner call already (a varlen forward runs forward again)
    if hasattr(err, "add_note"):
        err.add_note(note)
    elif err.__cause__ is None:  # printed above the exception, with the line and a caret
        err.__cause__ = RecError("the generated code failed in this statement", loc=loc)


def with_origins(text: str, spec: Source) -> str:
    """The generated source with each line's spec origin in a margin, as `reclang
    inspect --origins` prints it."""
    found = origins(text, spec)
    margins = {n: f"{_basename(spec)}:{loc}" for n, loc in found.items()}
    width = max(map(len, margins.values()), default=0)
    return "\n".join(f"{margins.get(n, ''):<{width}} | {line}".rstrip()
                     for n, line in enumerate(text.split("\n"), 1))


def _store(source: str, filename: str) -> Path:
    """Makes the cache entry hold exactly `source`; returns its path."""
    directory = config.cache_dir()
    path = directory / filename
    data = source.encode()
    if _read(path) == data:
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: kept by _prune
        return path
    try:
        write_atomically(directory, path, data)
    except OSError as err:
        raise RecError(f"cannot write generated code to {directory}: {err.strerror}; "
                       "set RECLANG_CACHE to a folder of your own") from None
    _prune(directory)
    return path


def _read(path: Path) -> bytes | None:
    """The bytes of a regular file at `path` (links are not followed), else None."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as file:
        return file.read()


def _execute(source: str, name: str, path: Path) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = str(path)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=str(path))
    # mtime None: linecache.checkcache keeps the entry, so getsource reads this text
    linecache.cache[str(path)] = (len(source), None, source.splitlines(True), str(path))
    _register(module)  # before running it, as import does: a kernel may look itself up
    try:
        exec(compile(source, str(path), "exec", dont_inherit=True), module.__dict__)  # noqa: S102
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _register(module: types.ModuleType) -> None:
    package = sys.modules.get(PACKAGE)
    if package is None:
        package = types.ModuleType(PACKAGE, "Modules of generated code (reclang/generated.py).")
        package.__path__ = []
        package.__spec__ = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        sys.modules[PACKAGE] = package
    sys.modules[module.__name__] = module
    setattr(package, module.__name__.rpartition(".")[2], module)


def _prune(directory: Path) -> None:
    """Removes the least recently used entries past the bound and temporary files of dead
    writers; safe while other processes run, as a loaded module never reads its file."""
    entries, now = [], time.time()
    for path in filter(lambda p: ENTRY.fullmatch(p.name), directory.iterdir()):
        with contextlib.suppress(OSError):
            info = path.lstat()
            if path.suffix == ".tmp" and now - info.st_mtime > STALE_TMP_S:
                path.unlink()
            elif path.suffix == ".py" and stat.S_ISREG(info.st_mode):
                entries.append((info.st_mtime, path))
    for _, path in sorted(entries)[:max(0, len(entries) - config.cache_max_files())]:
        with contextlib.suppress(OSError):
            path.unlink()
