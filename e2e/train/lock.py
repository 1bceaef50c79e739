"""One process trains a cell folder at a time: an flock on its `.lock` file
(`e2e.io.cell_paths`); its holder clears the temporaries a killed writer left."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from e2e.io import cell_paths


class CellBusyError(RuntimeError):
    """Another process is training this cell folder."""


@contextlib.contextmanager
def cell_lock(root: Path, wait_s: float = 0.0) -> Iterator[None]:
    """Holds an exclusive lock on a cell folder while it trains; CellBusyError for a second
    holder, after waiting up to `wait_s` seconds for the first to let go.

    flock(2) is released by the kernel when the holder dies, so a SIGKILLed or requeued job
    never blocks its own restart once its processes are gone; it also works across containers
    sharing the folder and, on Linux, on NFS (emulated with byte-range locks). Processes die
    asynchronously (a killed container's are removed by a watchdog, `jobs.plan.containers`):
    a requeued job waits (`wait_s`) rather than skip its own cell.
    """
    path = cell_paths(root).lock
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                raise CellBusyError(f"{root} is being trained by another process ({holder}); "
                                    "refusing to train it twice") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        for tmp in root.rglob(".*.tmp"):  # a killed writer's: no other writer holds the lock
            tmp.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)
