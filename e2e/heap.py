"""The heap of a training process: which allocator serves it (`malloc_in_use`: jobs preload
tcmalloc where it is installed, docs/performance.md), glibc's freed blocks kept for the next step
(`keep_freed_heap`) and handed back to the system on request (`return_freed_heap`). Without
glibc (musl, macOS, Windows) the last two do nothing; a preloaded allocator ignores them."""

from __future__ import annotations

import ctypes
from pathlib import Path

# The allocators a process may have preloaded in glibc's place, by their library's file name.
_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")

# mallopt's parameters (glibc's malloc.h, mallopt(3))
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# The largest every glibc accepts (2.36 accepts more). Higher is faster at the GPT-2 shape but
# fragments the heap: 256 MiB took a GPT-2 shape e2e cell from 6.0 to 9.4 GiB peak RSS.
_MMAP_THRESHOLD = 32 << 20
_NEVER = -1  # as M_TRIM_THRESHOLD: the heap is never shrunk by itself (mallopt(3))


def _libc() -> ctypes.CDLL | None:
    """The C library this process runs on, or None where ctypes cannot name it (Windows)."""
    try:
        return ctypes.CDLL(None)
    except Exception:  # noqa: BLE001 (no CDLL(None) on Windows)
        return None


def malloc_in_use(maps: Path = Path("/proc/self/maps")) -> str:
    """"tcmalloc", "jemalloc" or "mimalloc" when that library is mapped into this process (so
    preloaded: nothing here links one), else "glibc"; "unknown" without `/proc` (not Linux)."""
    try:
        mapped = maps.read_text()
    except OSError:
        return "unknown"
    libs = {line.rsplit("/", 1)[-1] for line in mapped.splitlines() if "/lib" in line}
    return next((a for a in _ALLOCATORS if any(f"lib{a}" in lib for lib in libs)), "glibc")


def keep_freed_heap() -> bool:
    """Serves every allocation up to 32 MiB from the heap, and keeps freed heap memory for
    reuse instead of handing it back to the system; for the whole process, from now on. True
    where glibc accepted both settings (an allocator preloaded in its place ignores them).

    A step allocates and frees the same tensors every time. By default glibc maps many of
    them afresh (it raises its mapping threshold only as far as the largest block freed so
    far) and shrinks the heap whenever 2x that threshold lies free at its top, so each step
    paid the page faults and the zeroing of that memory again. On 2 CPU cores, small shape,
    bf16 (docs/performance.md): the SAE's backward matmul into a fresh (1,024, 2,048) tensor
    took 2.0 ms against 1.3 ms with its memory reused; local about 44k -> 52k tokens/s, e2e
    17-19k -> 20k. Blocks above 32 MiB are still mapped each time. Peak RSS is about as
    before (a GPT-2 shape e2e cell: 5,980 against 5,922 MiB); the heap no longer shrinks
    between steps."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    mapped = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    trimmed = libc.mallopt(_M_TRIM_THRESHOLD, _NEVER)
    return bool(mapped and trimmed)


def return_freed_heap() -> None:
    """Hands glibc's freed heap pages back to the system (`malloc_trim`). Compiling frees
    much memory among blocks still in use, which glibc keeps and the steps cannot reuse: a
    GPT-2 shape e2e cell (batch 4 x 1,024) peaked at 7.1 GiB without this, 6.0 with it."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim(0)
