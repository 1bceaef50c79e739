"""glibc's heap in a training process: freed blocks kept for the next step (`keep_freed_heap`)
and handed back to the system on request (`return_freed_heap`). Without glibc (musl, macOS,
Windows) both do nothing; an allocator preloaded in glibc's place (tcmalloc: every job's where
installed, `jobs.plan.containers`) ignores them."""

from __future__ import annotations

import ctypes

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


def keep_freed_heap() -> bool:
    """Serves every allocation up to 32 MiB from the heap, and keeps freed heap memory for
    reuse instead of handing it back to the system; for the whole process, from now on. True
    where glibc accepted both settings (an allocator preloaded in its place ignores them).

    A step allocates and frees the same tensors every time; by default glibc maps many of
    them afresh and shrinks its heap, so each step paid their page faults and zeroing again.
    Small shape, bf16, 2 cores: local about 44k -> 52k tokens/s, e2e 17-19k -> 20k; peak RSS
    about as before; blocks above 32 MiB still mapped each step (docs/performance.md)."""
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
