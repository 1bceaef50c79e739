"""The cell's `metrics.h5`: train curves, eval history and final eval scalars, written atomically.

Layout: `train/<name>` and `eval_history/<name>` are 1-D datasets aligned with their `step`
dataset; `eval/<name>` are the final eval scalars; `alive_mask` (n_saes, n_dict) marks the
dictionary elements that fired in the post-training pass; the root attribute `config` holds the
cell config as JSON. Names with '/' (e.g. `mse/blocks.7.hook_resid_pre`) become nested groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from e2e.config import CellConfig
from e2e.io import atomic_path


def append_row(log: dict[str, list[float]], step: int, values: dict[str, float]) -> None:
    """Appends one row (its `step` and values) to a curve log of `write_metrics`'s shape."""
    for k, v in {"step": float(step), **values}.items():
        log.setdefault(k, []).append(float(v))


def write_metrics(path: Path, *, config_json: str, train: dict[str, list[float]],
                  eval_history: dict[str, list[float]], final_eval: dict[str, float] | None,
                  attrs: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
    """Writes the whole file to a temporary sibling and renames it: readers never see half."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["config"] = config_json
            for k, v in attrs.items():
                f.attrs[k] = v
            for group, series in (("train", train), ("eval_history", eval_history)):
                g = f.create_group(group)
                for name, values in series.items():
                    g.create_dataset(name, data=np.asarray(values, dtype=np.float64))
            if final_eval is not None:
                g = f.create_group("eval")
                for name, value in final_eval.items():
                    g.create_dataset(name, data=np.float64(value))
            for name, value in (arrays or {}).items():  # e.g. alive_mask (n_saes, n_dict)
                f.create_dataset(name, data=value, compression="gzip")


def _flatten(group: h5py.Group, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in group.items():
        name = f"{prefix}{key}"
        if isinstance(item, h5py.Group):
            out.update(_flatten(item, name + "/"))
        else:
            out[name] = item[()]
    return out


def read_metrics(path: Path) -> dict[str, Any]:
    """Reads metrics.h5 read-only into {"config", "attrs", "train", "eval_history", "eval"}."""
    with h5py.File(path, "r") as f:
        return {
            "config": f.attrs["config"],
            "attrs": {k: v for k, v in f.attrs.items() if k != "config"},
            "train": _flatten(f["train"]) if "train" in f else {},
            "eval_history": _flatten(f["eval_history"]) if "eval_history" in f else {},
            "eval": _flatten(f["eval"]) if "eval" in f else {},
            "alive_mask": f["alive_mask"][()] if "alive_mask" in f else None,
        }


def recorded_dtype(path: Path, default: str) -> str:
    """The resolved training dtype metrics.h5 at `path` recorded (`train_dtype`), else
    `default` (no file, or one written before it was recorded)."""
    if not Path(path).exists():
        return default
    with h5py.File(path, "r") as f:
        return str(f.attrs.get("train_dtype", default))


def wandb_run(cfg: CellConfig, out_dir: Path):
    """A wandb run only when asked for (`offline`/`online`); never needed to train."""
    if cfg.wandb.mode == "disabled":
        return None
    import wandb

    return wandb.init(project=cfg.wandb.project, mode=cfg.wandb.mode, dir=str(out_dir),
                      id=out_dir.name.replace("=", "-")[:64], resume="allow", name=out_dir.name,
                      config=cfg.to_dict(), reinit="create_new")
