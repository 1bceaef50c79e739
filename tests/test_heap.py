"""`e2e.heap`: what glibc does with a step's freed tensors, read from glibc itself
(`mallinfo2`), each case in a fresh process."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# In a fresh process: allocates a 24 MiB tensor three times at once, then frees them; prints
# whether the first was mapped on its own (glibc's `hblkhd` grew by it) and whether the heap
# shrank after the frees (its `arena` size).
PROBE = """
import ctypes, json, sys
import torch
from e2e.heap import keep_freed_heap

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
kept = keep_freed_heap() if sys.argv[1] == "keep" else None
mapped_before = libc.mallinfo2().hblkhd
blocks = [torch.ones(24 << 20, dtype=torch.uint8)]
mapped = libc.mallinfo2().hblkhd - mapped_before >= 24 << 20
blocks += [torch.ones(24 << 20, dtype=torch.uint8) for _ in range(2)]
heap = libc.mallinfo2().arena
del blocks
print(json.dumps(dict(kept=kept, mapped=mapped, shrank=libc.mallinfo2().arena < heap)))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc >= 2.33 only")
def test_keep_freed_heap_serves_a_step_from_the_heap_and_keeps_it():
    default, kept = _probe("default"), _probe("keep")
    assert default["mapped"], "by default glibc maps a fresh 24 MiB block on its own"
    assert kept["kept"] is True
    assert not kept["mapped"], "kept: 24 MiB comes from the heap"
    assert not kept["shrank"], "kept: freeing 72 MiB leaves the heap as large"
