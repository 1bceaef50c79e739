"""Cell folders on the output root: a cell's id wherever the root is mounted, and the folders of
roots written before ids stopped depending on it (found by their config, then rewritten).

A cell's config names folders inside the root (a grid's own LM and token rows, a stage under
`_sources/`). Its folder stores them relative to itself (`e2e.io.stored_config`) and its id hashes
that form, so `mv`, `cp -a` or another mount point keeps every finished cell finished. A folder
written before 2026-12-07 hashed the absolute paths of the root it was written under: such a
folder is found by its readable prefix and its config (equal once its in-root paths are read
under today's root), keeps its name, and has its config.json rewritten in the stored form when
the plan is written (`jobs.run.manifest.write_configs`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from e2e.config import CellConfig, ConfigError, normalized
from e2e.io import map_paths, read_cell_config, stored_config
from e2e.typed import changed
from jobs.plan.grid import cell_id


def folder_id(cfg: CellConfig, grid_dir: Path) -> str:
    """The cell's id (its folder's name under `grid_dir = <root>/<grid>`, both absolute)."""
    return cell_id(stored_config(cfg, grid_dir / "cell", grid_dir.parent))


def legacy_folder(cfg: CellConfig, cid: str, grid_dir: Path, names: set[str]) -> str | None:
    """The name of a folder among `names` (those of `grid_dir`) that holds `cfg` under an id of
    before 2026-12-07 (`cid`'s readable part, another hash); None when there is none."""
    head = cid.rsplit("-", 1)[0]
    pattern = re.compile(re.escape(head) + "-[0-9a-f]{6}")
    root = grid_dir.parent
    for name in sorted(n for n in names if n != cid and pattern.fullmatch(n)):
        try:
            old = read_cell_config(grid_dir / name)
        except (OSError, ConfigError):
            continue
        if _same(_rerooted(old, cfg, root), cfg):
            return name
    return None


def _rerooted(old: CellConfig, cfg: CellConfig, root: Path) -> CellConfig:
    """`old` with each absolute path that ends in the root-relative part of `cfg`'s (a folder of
    the same grid under another root) replaced by `cfg`'s."""
    mine = {}
    map_paths(cfg, lambda f, v: mine.setdefault(f, v))

    def moved(f: str, theirs: str) -> str:
        inside = mine[f] and Path(mine[f]).is_relative_to(root)
        return mine[f] if inside and theirs.endswith(os.sep + os.path.relpath(mine[f], root)) \
            else theirs
    return map_paths(old, moved)


def _same(a: CellConfig, b: CellConfig) -> bool:
    return not changed(normalized(a).to_dict(), normalized(b).to_dict())
