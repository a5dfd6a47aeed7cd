"""Writing a cache entry: the generated sources (reclang/generated.py) and the compiled
CPU kernels (runtime/cpp.py) are replaced whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def write_atomically(directory: Path, path: Path, data: bytes) -> None:
    """Writes a unique temporary file and renames it over `path`, so that a reader never
    sees half a file (two processes may fill the same cache)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        if path.is_dir() and not path.is_symlink():  # a corrupt entry: rename cannot replace it
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
