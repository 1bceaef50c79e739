"""Reading a stage (written by `e2e.data.stage`): its files checked against the manifest, and
the rows of a split, memory-mapped, in order."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from e2e.config import DataConfig

ROWS_FILE = "rows.json"  # in rows/: split -> shard files, rows, context length
MANIFEST = "manifest.json"


class StageError(RuntimeError):
    """A stage is missing, partial, corrupt or does not hold what a cell needs."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


_VERIFIED: set[Path] = set()  # stages whose hashes this process checked already


def verify(stage_dir: Path | str, check_hashes: bool = True) -> dict:
    """The stage's manifest if the stage is complete and its files match it; else StageError.

    Sizes are checked on every call, sha256 once per process (a cell opens train and eval).
    """
    d = Path(stage_dir).resolve()
    check_hashes = check_hashes and d not in _VERIFIED
    if not (d / "DONE").exists() or not (d / MANIFEST).exists():
        raise StageError(f"{d} is not a complete stage (no DONE): run the staging again, it "
                         "resumes where it stopped")
    manifest = json.loads((d / MANIFEST).read_text())
    for rel, want in manifest["files"].items():
        p = d / rel
        if not p.exists() or p.stat().st_size != want["bytes"]:
            raise StageError(f"{d}: {rel} is missing or has the wrong size; the stage is "
                             "corrupt: delete it and stage again")
        if check_hashes and sha256(p) != want["sha256"]:
            raise StageError(f"{d}: {rel} does not match its sha256 in the manifest; the "
                             "stage is corrupt: delete it and stage again")
    if check_hashes:
        _VERIFIED.add(d)
    return manifest


class StagedRows:
    """Rows of one split of a stage, memory-mapped, read in order from `row`."""

    def __init__(self, cfg: DataConfig, split: str):
        rows_dir = Path(cfg.dataset)
        verify(rows_dir.parent)
        meta = json.loads((rows_dir / ROWS_FILE).read_text())
        if split not in meta["splits"]:
            raise StageError(f"{rows_dir} has no split {split!r}; it has {list(meta['splits'])}")
        if meta["context_length"] != cfg.context_length:
            raise StageError(f"{rows_dir} holds rows of {meta['context_length']} tokens, the "
                             f"config asks for {cfg.context_length}")
        self.shards = [np.load(rows_dir / s["file"], mmap_mode="r")
                       for s in meta["splits"][split]["shards"]]
        self.starts = np.cumsum([0] + [len(a) for a in self.shards])  # first row of each
        self.n_rows = meta["splits"][split]["rows"]
        self.where = rows_dir / split

    def take(self, row: int, n: int) -> torch.Tensor:
        if row + n > self.n_rows:
            raise StageError(f"{self.where}: the stage holds {self.n_rows} rows and this cell "
                             f"reads past them (row {row + n}); stage again with the cell's "
                             "budget")
        out = []
        while n:
            k = int(np.searchsorted(self.starts, row, side="right")) - 1
            chunk = self.shards[k][row - self.starts[k]:row - self.starts[k] + n]
            out.append(torch.from_numpy(np.asarray(chunk, dtype=np.int64)))
            row, n = row + len(chunk), n - len(chunk)
        return torch.cat(out)


def is_staged(cfg: DataConfig) -> bool:
    return (Path(cfg.dataset) / ROWS_FILE).exists()
