"""The feature browser's files: its fixed pages (`browser_assets/`) and the data scripts beside
them (`Writer`: one `BROWSER.put(key, value)` per file, which <script> tags load from file://),
with the numbers and token shades in the compact form the pages read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent / "browser_assets"
LEVELS = "0123456789abcdefghijklmnopqrstuvwxyz"  # a token's shade: its code / the feature's max


class Writer:
    """The data scripts of a browser folder's `data/`: `put(name, key, value)` writes
    `<name>.js`, which hands `value` (JSON, no NaN) to the pages under `key`."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, key: str, value) -> None:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        (self.folder / f"{name}.js").write_text(f"BROWSER.put({json.dumps(key)},{text});\n")


def shades(win: np.ndarray, scale: np.ndarray) -> list[str]:
    """One character per token: its code over the feature's max in 36 levels (negative codes
    of DB-KSVD atoms as 0); a space outside the context row."""
    q = np.clip(np.rint(win / np.maximum(scale, 1e-30)[:, None] * 35), 0, 35)
    return ["".join(" " if np.isnan(v) else LEVELS[int(v)] for v in row) for row in q]


def rounded(x) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else float(f"{x:.4g}")


def rounded_list(a: np.ndarray) -> list:
    return np.vectorize(rounded, otypes=[object])(np.asarray(a, dtype=np.float64)).tolist() \
        if np.size(a) else []


def read_or_empty(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def copy_plots(results: Path, tmp: Path) -> list[str]:
    """The collector's and analysis's PNGs, copied in (the folder stands alone)."""
    names = []
    for p in sorted(results.glob("*.png")):
        shutil.copy2(p, tmp / p.name)
        names.append(p.name)
    return names


def refresh(results: Path) -> None:
    """A built browser brought up to date after a later step (auto-interp, the evaluations):
    their per-dictionary data files, and its index's headline and plots as they are now."""
    from jobs.report import autointerp, evals

    folder = results / "browser"
    data = folder / "data"
    if not data.is_dir():
        return
    autointerp.browser_data(results, Writer(data).put)
    evals.browser_data(results, Writer(data).put)
    text = (data / "index.js").read_text()
    index = json.loads(text[text.index(",") + 1:text.rindex(")")])
    index["headline"] = (results / "headline.txt").read_text()
    for name in (autointerp.FIGURE, evals.FIGURE):
        if (results / name).exists():
            shutil.copy(results / name, folder / name)
            index["plots"] = sorted(set(index["plots"]) | {name})
    Writer(data).put("index", "index", index)
