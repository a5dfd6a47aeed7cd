"""The cache of generated code and its loader (reclang/generated.py, reclang/config.py):
what runs is the compiler's text, registered under an importable name, whatever the
cache folder holds."""

import concurrent.futures
import importlib
import os
import pickle
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

import reclang
from reclang import generated

SPEC = """cell acc(D = 3):
    input x[D]
    param w[D] = 1
    state s[D] = 0
    s[d] <- 0.5 * s[d] + w[d] * x[d]
    out y[d] = s[d]
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECLANG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_generated_functions_are_importable_by_qualified_name(cache):
    """torch.compile and pickle look functions up by module and name."""
    code = reclang.loads(SPEC).module()._generated
    assert code.__name__.startswith("reclang_generated.acc_sequential_")
    assert importlib.import_module(code.forward.__module__) is code
    assert pickle.loads(pickle.dumps(code.forward)) is code.forward


def test_torch_compile_runs_a_module(cache):
    m = reclang.loads(SPEC).module()
    x = torch.randn(2, 5, 3)
    y, _ = torch.compile(m, backend="eager")(x=x)
    assert torch.equal(y, m(x=x)[0])


def _entry(cache, source):
    """The cache file that holds `source`."""
    [path] = [p for p in cache.glob("*.py") if p.read_bytes() == source.encode()]
    return path


def _planted(tmp_path, name):
    """Code that leaves a marker file when it runs."""
    marker = tmp_path / f"ran_{name}"
    return marker, f"open({str(marker)!r}, 'w').close()\ndef forward(*a, **k): pass\n"


def _check_runs_the_compiler_text(tmp_path, monkeypatch, plant):
    """Builds the cell once to learn its file's name, plants `plant(path)` under that
    name in a fresh cache, builds again from there: the true module must run."""
    cell = reclang.loads(SPEC)
    monkeypatch.setenv("RECLANG_CACHE", str(tmp_path / "first"))
    name = _entry(tmp_path / "first", cell.module().source).name
    fresh = tmp_path / "fresh"
    fresh.mkdir(mode=0o700)
    marker = plant(fresh / name)
    monkeypatch.setenv("RECLANG_CACHE", str(fresh))
    m = cell.module()
    y, _ = m(x=torch.ones(1, 2, 3))
    assert torch.equal(y, torch.tensor([[[1.0] * 3, [1.5] * 3]]))
    assert marker is None or not marker.exists(), "planted code ran"
    assert (fresh / name).read_bytes() == m.source.encode()  # the entry is mended
    assert m._generated.__file__ == str(fresh / name)


def test_planted_bytecode_whose_header_matches_the_source_never_runs(tmp_path, monkeypatch):
    def plant(path):
        marker, evil = _planted(tmp_path, "pyc")
        path.write_text(reclang.loads(SPEC).source())
        info = path.stat()
        code = compile(evil, str(path), "exec")
        pyc = importlib._bootstrap_external._code_to_timestamp_pyc(
            code, int(info.st_mtime), info.st_size)
        cached = Path(importlib.util.cache_from_source(str(path)))
        cached.parent.mkdir()
        cached.write_bytes(pyc)
        return marker

    _check_runs_the_compiler_text(tmp_path, monkeypatch, plant)


def _write(content):
    def plant(path):
        path.write_bytes(content(path))
    return plant


def _malicious(tmp_path):
    def plant(path):
        marker, evil = _planted(tmp_path, "py")
        path.write_text(evil)
        return marker
    return plant


def _linked(tmp_path):
    def plant(path):
        marker, evil = _planted(tmp_path, "link")
        (tmp_path / "evil.py").write_text(evil)
        path.symlink_to(tmp_path / "evil.py")
        return marker
    return plant


def _folder(path):
    (path / "inside").mkdir(parents=True)


@pytest.mark.parametrize("corrupt", ["not utf-8", "truncated", "empty", "folder", "malicious",
                                     "link"])
def test_a_corrupt_or_planted_entry_is_regenerated(corrupt, tmp_path, monkeypatch):
    half = reclang.loads(SPEC).source()[:200].encode()
    plant = {"not utf-8": _write(lambda _: b"\xff\xfe\x00 not text"),
             "truncated": _write(lambda _: half), "empty": _write(lambda _: b""),
             "folder": _folder, "malicious": _malicious(tmp_path),
             "link": _linked(tmp_path)}[corrupt]
    _check_runs_the_compiler_text(tmp_path, monkeypatch, plant)


def _build_and_run(cell, size):
    y, _ = cell.module()(x=torch.ones(1, 2, size))
    return bool(torch.equal(y[0, 1], torch.full((size,), 1.5)))


@pytest.mark.parametrize("size", [5, 6, 7, 8])
def test_threads_and_forked_processes_build_one_new_cell_into_an_empty_cache(size, cache):
    """8 threads and 8 processes write and load the same entry at once."""
    cell = reclang.loads(SPEC, D=size)
    cell.source()  # generated before forking: the workers only write and load
    read, write = os.pipe()
    children = []
    for _ in range(8):
        pid = os.fork()
        if pid == 0:  # the child: wait for the start, build, report by the exit status
            os.close(write)
            os.read(read, 1)
            ok = False
            try:
                torch.set_num_threads(1)
                ok = _build_and_run(cell, size)
            finally:
                os._exit(0 if ok else 1)
        children.append(pid)
    os.close(read)
    barrier = threading.Barrier(8)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(lambda: barrier.wait() is None or _build_and_run(cell, size))
                   for _ in range(8)]
        os.close(write)  # starts the children
        assert all(f.result(timeout=120) for f in futures)
    assert [os.waitpid(pid, 0)[1] for pid in children] == [0] * 8
    assert [p.name for p in cache.iterdir() if p.suffix != ".py"] == []  # no temporary left


def test_the_cache_keeps_the_most_recently_used_entries(cache, monkeypatch):
    """...and removes temporary files of dead writers, but no file it did not write."""
    monkeypatch.setenv("RECLANG_CACHE_MAX", "2")
    cache.mkdir(mode=0o700)
    for name in (".acc_sequential_0123456789abcdef.k2_x9.tmp", "notes.py", "old.tmp"):
        (cache / name).write_text(name)
        os.utime(cache / name, (0, 0))
    sources = [reclang.loads(SPEC, D=d).module().source for d in (2, 3, 4)]
    assert sorted(p.read_text() for p in cache.iterdir()) == sorted(
        ["notes.py", "old.tmp", *sources[1:]])


def test_a_cache_folder_others_can_write_is_refused(cache):
    cache.mkdir()
    cache.chmod(0o775)
    with pytest.raises(reclang.RecError, match="can be written by other users .mode 775."):
        reclang.loads(SPEC).module()


def test_a_cache_folder_of_another_user_is_refused(cache, monkeypatch):
    cache.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: cache.stat().st_uid + 1)
    with pytest.raises(reclang.RecError, match="belongs to user id .*reclang does not trust"):
        reclang.loads(SPEC).module()


def test_a_link_of_another_user_to_a_folder_of_yours_is_refused(tmp_path, monkeypatch):
    """As a link planted in /tmp would be (someone else's link, your folder)."""
    (tmp_path / "yours").mkdir(mode=0o700)
    link = tmp_path / "cache"
    link.symlink_to(tmp_path / "yours")
    real = Path.lstat

    def lstat(path, *args, **kwargs):  # the link as someone else's
        info = real(path, *args, **kwargs)
        return os.stat_result((*info[:4], info.st_uid + 1, *info[5:])) if path == link else info

    monkeypatch.setattr(Path, "lstat", lstat)
    monkeypatch.setenv("RECLANG_CACHE", str(link))
    with pytest.raises(reclang.RecError, match="belongs to user id"):
        reclang.loads(SPEC).module()


def test_a_cache_folder_that_cannot_be_created_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("RECLANG_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(reclang.RecError, match="cannot create the cache folder"):
        reclang.loads(SPEC).module()


def test_without_a_writable_home_the_cache_is_a_private_folder_of_the_user(tmp_path,
                                                                          monkeypatch):
    monkeypatch.delenv("RECLANG_CACHE", raising=False)
    (tmp_path / "home").write_text("")  # a home under which nothing can be created
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    m = reclang.loads(SPEC).module()
    folder = tmp_path / f"reclang-cache-{os.getuid()}"
    assert Path(m._generated.__file__).parent == folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    folder.chmod(0o777)  # planted by someone else, world-writable: refused, not used
    with pytest.raises(reclang.RecError, match="can be written by other users"):
        reclang.loads(SPEC).module()


def test_a_process_forked_while_another_thread_loads_can_load(cache):
    """The loader's lock, held by a thread at the fork, is not held in the child."""
    cell = reclang.loads(SPEC, D=9)
    with generated._lock:
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                torch.set_num_threads(1)
                ok = _build_and_run(cell, 9)
            finally:
                os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if status[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert status == (pid, 0), "the child could not load (deadlock or failure)"
