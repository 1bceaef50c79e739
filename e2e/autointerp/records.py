"""Activation records of a feature: the contexts an explainer reads and scorers test on.

A record is a window of tokens around one position of held-out text with the feature's code on
each token (Bills et al. 2023's "activation record"; Delphi's "example"). Three kinds, as in
Delphi (Paulo et al. 2024) and the paper's library: the top contexts (largest codes, what the
explainer is shown), samples from equal intervals of (0, max] (held-out activating examples the
scorers test on), and silent contexts (the feature is zero on every token of the window: the
negatives of detection and fuzzing). The feature browser's pass computes all three once
(`jobs.analysis.browser`; the silent ones by `silent_positions`); `save`/`load` keep them beside the
tables in one .npz per dictionary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e2e.io import atomic_path

TOP, INTERVAL, SILENT = 0, 1, 2


@dataclass
class Record:
    tokens: list[str]
    acts: np.ndarray  # (len(tokens),) the feature's code on each token; 0 where silent
    kind: int  # TOP, INTERVAL or SILENT

    @property
    def activating(self) -> bool:
        return self.kind != SILENT


def silent_positions(window_codes, n_elements: int, n_positions: int, want: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`want` random positions per element whose whole window is silent, and their codes.

    window_codes(elements (m,), positions (m,)) -> (m, W) codes (nan outside a row): the
    browser's `features.window_codes`. Draws 4 * want candidates per element (seeded) and keeps
    the first silent ones; -1 where fewer are found. Returns positions (n_elements, want) and
    codes (n_elements, want, W)."""
    rng = np.random.default_rng(seed)
    m = 4 * want
    pos = rng.integers(0, n_positions, (n_elements, m))
    elem = np.repeat(np.arange(n_elements), m)
    codes = window_codes(elem, pos.ravel()).reshape(n_elements, m, -1)
    silent = np.all(np.nan_to_num(codes) == 0, axis=-1)
    out_pos = np.full((n_elements, want), -1)
    out = np.zeros((n_elements, want, codes.shape[-1]), dtype=np.float32)
    for i in range(n_elements):
        keep = np.flatnonzero(silent[i])[:want]
        out_pos[i, :len(keep)] = pos[i, keep]
        out[i, :len(keep)] = codes[i, keep]
    return out_pos, out


def save(path: Path, features: np.ndarray, pos: np.ndarray, kind: np.ndarray,
         codes: np.ndarray, tokens: np.ndarray, ctx: int, vocab: list[str]) -> None:
    """One dictionary's records: features (P,), flat positions pos (P, R) (-1: none), kind
    (R,), codes (P, R, W) (nan outside the row), the scanned token ids (rows * ctx,) and the
    strings of the token ids the windows hold (the vocabulary is not stored whole)."""
    half = (codes.shape[-1] - 1) // 2
    ids = _window_ids(tokens, pos, ctx, half)
    used = np.unique(ids[ids >= 0])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, features=features, pos=pos, kind=kind,
                                codes=codes.astype(np.float32), ids=ids, used=used,
                                strings=np.array(json.dumps([vocab[i] for i in used])))


def load(path: Path) -> dict[int, list[Record]]:
    """feature -> its records (top first, then intervals, then silent), windows cut to the
    row (no padding tokens)."""
    with np.load(path) as z:
        features, pos, kind, codes, ids = (z[k] for k in ("features", "pos", "kind", "codes",
                                                          "ids"))
        strings = dict(zip(z["used"].tolist(), json.loads(str(z["strings"])), strict=True))
    out = {}
    for p, f in enumerate(features.tolist()):
        recs = []
        for r in range(pos.shape[1]):
            if pos[p, r] < 0:
                continue
            ok = ids[p, r] >= 0
            recs.append(Record([strings[i] for i in ids[p, r][ok].tolist()],
                               np.nan_to_num(codes[p, r][ok]), int(kind[r])))
        out[f] = recs
    return out


def _window_ids(tokens: np.ndarray, pos: np.ndarray, ctx: int, half: int) -> np.ndarray:
    """(P, R, 2 half + 1) token ids around each position, -1 outside its row or for pos -1."""
    offsets = np.arange(-half, half + 1)
    col = (pos % ctx)[..., None] + offsets
    flat = pos[..., None] + offsets
    ok = (pos[..., None] >= 0) & (col >= 0) & (col < ctx)
    return np.where(ok, tokens[np.clip(flat, 0, len(tokens) - 1)], -1).astype(np.int64)
