"""`auto`'s measured choices, kept per machine in the cache folder as data: one JSON file
per machine key (CPU model, torch version, intra-op threads, reclang version), so that
machines sharing a home folder keep their own. The file is read with `json.loads` and
checked entry by entry: it is never executed, and a malformed file, or one of another
machine, is ignored (its choices measured again, and the file rewritten whole,
atomically: reclang/runtime/files.py). A write lost to another process writing at the
same time costs one measurement in a later process, nothing else."""

from __future__ import annotations

import hashlib
import json
import platform

import torch

from .. import config
from ..runtime.files import write_atomically

FORMAT = 1
_memory: dict[str, dict] = {}  # file path -> its checked choices, read once per process


def machine() -> dict:
    """What makes measured times comparable: the CPU, torch, the threads ops may use."""
    return {"cpu": _cpu_model(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "reclang": config.VERSION}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), platform.processor())
    except OSError:  # not Linux
        return platform.processor() or platform.machine()


def lookup(bucket: str) -> dict | None:
    """The entry measured for this bucket on this machine: {"backend", "times"}."""
    return _choices(machine()).get(bucket)


def entries(prefix: str) -> dict:
    """The entries of buckets whose key starts with `prefix` (a cell's)."""
    return {k: v for k, v in _choices(machine()).items() if k.startswith(prefix)}


def save(bucket: str, entry: dict) -> None:
    """Adds an entry and rewrites the file; a cache folder that cannot be written only
    means measuring again in the next process."""
    key = machine()
    choices = _choices(key)
    choices[bucket] = entry
    path = _path(key)
    data = json.dumps({"format": FORMAT, "machine": key, "choices": choices}, indent=1,
                      sort_keys=True).encode()
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_atomically(path.parent, path, data)
    except OSError:
        pass


def _path(key: dict):
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return config.cache_dir() / "auto" / f"auto-{digest[:16]}.json"


def _choices(key: dict) -> dict:
    path = _path(key)
    if str(path) not in _memory:
        _memory[str(path)] = parse(path, key)
    return _memory[str(path)]


def parse(path, key: dict) -> dict:
    """The well-formed entries of the file at `path` if it is this machine's, else {}."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):  # missing, unreadable, not JSON (UnicodeDecodeError too)
        return {}
    if not (isinstance(data, dict) and data.get("format") == FORMAT
            and data.get("machine") == key and isinstance(data.get("choices"), dict)):
        return {}
    return {bucket: entry for bucket, entry in data["choices"].items() if _entry(entry)}


def _entry(entry) -> bool:
    """{"backend": name, "times": {name: seconds}}, the backend among the times."""
    if not isinstance(entry, dict) or not isinstance(entry.get("times"), dict):
        return False
    times = entry["times"]
    return (isinstance(entry.get("backend"), str) and entry["backend"] in times
            and all(isinstance(b, str) and isinstance(t, float) for b, t in times.items()))
