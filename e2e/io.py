"""Atomic writes, the one function that names every file of a cell, a cell's
config as stored in its folder (paths inside the output root relative to the folder, so a moved
root keeps its cells) and the check that a cell folder holds the config it is asked to train."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from e2e.config import CellConfig, ConfigError, normalized
from e2e.typed import changed


@contextlib.contextmanager
def atomic_path(path: Path, keep_previous: bool = False) -> Iterator[Path]:
    """Yields a temporary sibling of `path`; on success fsyncs it and renames it into place.

    A reader (or a resumed run) sees either the old file or the new one, never half of one.
    With `keep_previous`, the file it replaces becomes `previous(path)` first (a checkpoint
    damaged later, by a full disk or a lost NFS write, then has a good one before it). A
    temporary left by a killed writer is removed by the next holder of the cell's lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the process and thread: two writers of one path never share a temporary
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous(path))
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def previous(path: Path) -> Path:
    """`checkpoint.pt` -> `checkpoint.prev.pt`: the file `atomic_path(keep_previous)` kept."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, with no intact one before it."""


def load_checkpoint(path: Path, device) -> dict:
    """torch.load of a checkpoint; a damaged one (truncated, corrupt) falls back to the one
    before it (`previous`), saying so in one line, else CheckpointError naming the file and
    the remedy. The previous one is a consistent, earlier state: resuming from it repeats the
    steps since, to the same result."""
    import torch

    try:
        return torch.load(path, weights_only=True, map_location=device)
    except Exception as e:  # noqa: BLE001 - whatever the damage, the same two ways out
        why = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    prev = previous(path)
    try:
        state = torch.load(prev, weights_only=True, map_location=device)
    except Exception:  # noqa: BLE001
        raise CheckpointError(f"{path} is damaged ({why}) and no intact checkpoint precedes "
                              "it: delete it to start this cell over") from None
    print(f"{path} is damaged ({why}); resuming from {prev.name}, the checkpoint before it",
          flush=True)
    return state


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@dataclass(frozen=True)
class CellPaths:
    root: Path
    config: Path
    metrics: Path
    sae: Path
    checkpoint: Path
    done: Path
    log: Path
    lock: Path


def cell_paths(out_dir: Path | str) -> CellPaths:
    root = Path(out_dir)
    return CellPaths(
        root=root,
        config=root / "config.json",
        metrics=root / "metrics.h5",
        sae=root / "sae",
        checkpoint=root / "checkpoint.pt",
        done=root / "DONE",
        log=root / "train.log",
        lock=root / ".lock",
    )


# The config fields that may name a folder; `stored_config` writes those inside the output root
# relative to the cell folder (`../_pretrain-1a2b3c/model`), `read_cell_config` resolves them.
PATH_FIELDS = ("model.name_or_path", "data.dataset", "init.from_path")


def map_paths(cfg: CellConfig, fn: Callable[[str, str], str]) -> CellConfig:
    """`cfg` with each path field's value `v` replaced by `fn(field, v)`."""
    for f in PATH_FIELDS:
        section, name = f.split(".")
        part = getattr(cfg, section)
        cfg = replace(cfg, **{section: replace(part, **{name: fn(f, getattr(part, name))})})
    return cfg


def stored_config(cfg: CellConfig, cell_dir: Path | str, root: Path | str) -> CellConfig:
    """`cfg` as its folder `cell_dir` holds it: each path field that names a folder inside the
    output `root` (a grid's own LM and token rows, a stage under `_sources/`) relative to
    `cell_dir`, so beginning with `../` (a hub id never does); other values as they are. Both
    absolute. A cell's id hashes this form: it does not depend on where the root is mounted."""
    return map_paths(cfg, lambda _, v: os.path.relpath(v, cell_dir) if Path(v).is_absolute()
                     and Path(v).is_relative_to(root) else v)


def read_cell_config(cell_dir: Path | str) -> CellConfig:
    """The config a cell folder holds, its `../` paths resolved where the folder is now.
    FileNotFoundError without config.json; ConfigError for one that is not a config."""
    cfg = CellConfig.from_json(cell_paths(cell_dir).config.read_text())
    base = Path(cell_dir).absolute()
    return map_paths(cfg, lambda _, v: os.path.normpath(base / v) if v.startswith("../") else v)


def check_folder_config(path: Path, cfg: CellConfig) -> None:
    """A cell folder's config.json must hold `cfg` (sections its setting never reads compare at
    today's defaults); ConfigError naming the fields that differ."""
    try:
        old = normalized(read_cell_config(path.parent))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    diff = [f"{k}: {a!r} -> {b!r}"
            for k, (a, b) in changed(old.to_dict(), normalized(cfg).to_dict()).items()]
    if diff:
        raise ConfigError(f"{path.parent} holds a different config: {'; '.join(diff)}")
