"""`e2e.kernels.heap`: what glibc does with a step's freed tensors, read from glibc itself
(`mallinfo2`), each case in a fresh process; and which allocator a job's process runs on
(`jobs.plan.containers.malloc_in_use`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from ctypes.util import find_library
from pathlib import Path

import pytest

from e2e.kernels import heap
from jobs.plan.containers import malloc_in_use

REPO = Path(__file__).resolve().parent.parent

# In a fresh process (no torch: nothing else allocating in between): allocates three 24 MiB
# blocks with glibc's malloc, writes them, frees them newest first; prints whether the first
# was mapped on its own (glibc's `hblkhd` grew by it) and whether the heap shrank after the
# frees (its `arena` size). "mmap-only" sets the mapping threshold alone: the control in which
# glibc's default trimming must shrink the heap.
PROBE = """
import ctypes, json, sys
from e2e.kernels.heap import _M_MMAP_THRESHOLD, _MMAP_THRESHOLD, keep_freed_heap

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
mode = sys.argv[1]
kept = keep_freed_heap() if mode == "keep" else None
if mode == "mmap-only":
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
n = 24 << 20
mapped_before = libc.mallinfo2().hblkhd
blocks = [libc.malloc(n)]
mapped = libc.mallinfo2().hblkhd - mapped_before >= n
blocks += [libc.malloc(n), libc.malloc(n)]
for b in blocks:
    libc.memset(b, 1, n)
heap = libc.mallinfo2().arena
for b in reversed(blocks):
    libc.free(b)
print(json.dumps(dict(kept=kept, mapped=mapped, shrank=libc.mallinfo2().arena < heap)))
"""


def _probe(mode: str) -> dict:
    # glibc's defaults, whatever this shell set (MALLOC_*_ variables, tunables, a preloaded
    # allocator)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD"))}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, check=True, env=env,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.skipif(not hasattr(heap._libc(), "mallinfo2"), reason="glibc >= 2.33 only")
def test_keep_freed_heap_serves_a_step_from_the_heap_and_keeps_it():
    default, control, kept = _probe("default"), _probe("mmap-only"), _probe("keep")
    assert default["mapped"], "by default glibc maps a fresh 24 MiB block on its own"
    assert not control["mapped"] and control["shrank"], "the control: trimmed by default"
    assert kept["kept"] is True
    assert not kept["mapped"], "kept: 24 MiB comes from the heap"
    assert not kept["shrank"], "kept: freeing 72 MiB leaves the heap as large"


def test_without_a_c_library_the_heap_is_left_alone(monkeypatch):
    monkeypatch.setattr(heap, "_libc", lambda: None)
    assert heap.keep_freed_heap() is False
    heap.return_freed_heap()  # nothing to do, no error


def test_train_pack_keeps_the_freed_heap_before_it_trains(monkeypatch, tmp_path):
    from e2e.config import CellConfig
    from e2e.train import loop

    class Called(Exception):
        pass

    def spy():
        raise Called

    monkeypatch.setattr(loop, "keep_freed_heap", spy)
    with pytest.raises(Called):
        loop.train_pack([CellConfig()], [tmp_path / "cell"])
    assert not (tmp_path / "cell").exists(), "set before anything is written"


@pytest.mark.skipif(not find_library("tcmalloc_minimal"), reason="libtcmalloc-minimal4 missing")
def test_malloc_in_use_names_a_preloaded_tcmalloc_and_glibc_otherwise():
    code = "from jobs.plan.containers import malloc_in_use; print(malloc_in_use())"
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}

    def run(**extra):
        return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, **extra},
                              check=True, capture_output=True, text=True).stdout.strip()

    assert run() == "glibc"
    assert run(LD_PRELOAD=find_library("tcmalloc_minimal")) == "tcmalloc"


def test_malloc_in_use_without_proc_is_unknown(tmp_path):
    assert malloc_in_use(tmp_path / "no-maps") == "unknown"
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n"
                    "7f02-7f03 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert malloc_in_use(maps) == "jemalloc"
