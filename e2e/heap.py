"""glibc's heap in a training process: freed blocks kept for the next step (`keep_freed_heap`)
and handed back to the system on request (`return_freed_heap`). Elsewhere (musl, macOS,
Windows, an allocator preloaded in glibc's place) both do nothing."""

from __future__ import annotations

import ctypes

# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: about 2 GiB


def _libc():
    try:
        return ctypes.CDLL(None)
    except Exception:  # noqa: BLE001 (no CDLL(None) on Windows)
        return None


def keep_freed_heap() -> bool:
    """Serves every allocation up to 32 MiB from the heap and keeps freed heap memory for
    reuse instead of handing it back to the system after each free; True where set.

    A step allocates and frees the same tensors every time. By default glibc maps many of
    them afresh (it raises its mapping threshold only as far as the largest block freed so
    far) and shrinks the heap whenever 2x that threshold lies free at its top, so the next
    step pays the page faults and the zeroing of that memory again. On 2 CPU cores
    (benchmarks/bench_settings.py, the small shape, bf16): the SAE's backward matmul into a
    fresh (1,024, 2,048) tensor took 2.0 ms against 1.3 ms; local 44k -> 54k tokens/s, e2e
    17-19k -> 20k. Blocks above 32 MiB are still mapped and unmapped each time (glibc's
    ceiling). Peak memory is what the step holds at once, as before; the heap no longer
    shrinks between steps (docs/performance.md)."""
    libc = _libc()
    try:
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                    and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    except AttributeError:  # not glibc, or no libc at all
        return False


def return_freed_heap() -> None:
    """Hands glibc's freed heap pages back to the system (`malloc_trim`). Compiling frees
    much memory among blocks still in use, which glibc keeps and the steps cannot reuse: a
    GPT-2 shape e2e cell (batch 4 x 1,024) peaked at 7.1 GiB without this, 6.0 with it."""
    libc = _libc()
    try:
        libc.malloc_trim(0)
    except AttributeError:  # not glibc, or no libc at all
        pass
