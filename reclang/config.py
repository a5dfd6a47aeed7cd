"""Every environment setting reclang reads, in one place.

RECLANG_CACHE   where generated sources are written (default ~/.cache/reclang)
RECLANG_DEBUG   at load time, print: 2 the IR, 3 also the plan, 4 also the generated source
                (when a module is built)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "reclang"
    path = Path(os.environ.get("RECLANG_CACHE", default))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: fall back to the temporary directory
        path = Path(tempfile.gettempdir()) / "reclang-cache"
        path.mkdir(parents=True, exist_ok=True)
    return path


def debug_level() -> int:
    try:
        return int(os.environ.get("RECLANG_DEBUG", "0"))
    except ValueError:
        return 0
