"""Dictionary geometry (Braun et al. 2024, Sec. 3.3): max cosine similarities between unit-norm
dictionary elements, within an SAE, across seeds and across settings, with bootstrap CIs.

Cosines are signed and elements are never matched: each element's similarity is its largest
cosine to any element of the other dictionary (or of its own, itself excluded). The cosine
matrix is formed in blocks (`e2e.analysis.cosine`), so 46,080-element dictionaries need one 2,048 x
46,080 block at a time, never the full matrix.
"""

from __future__ import annotations

import numpy as np

from e2e.analysis.cosine import max_cosines

__all__ = ["max_cosines", "histogram", "bootstrap_mean_diff", "HIST_BINS"]

HIST_BINS = 50  # on [0, 1], as the paper's Fig. 3


def histogram(values: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Counts on [0, 1] in `bins` equal bins (negative maxima, rare, go to the first)."""
    return np.histogram(np.clip(values, 0, 1), bins=bins, range=(0, 1))[0]


def bootstrap_mean_diff(x: np.ndarray, y: np.ndarray, n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float, float]:
    """mean(x) - mean(y) and its percentile bootstrap CI (elements resampled in each group)."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    diffs = np.empty(n_boot)
    for k in range(n_boot):
        diffs[k] = (x[rng.integers(0, len(x), len(x))].mean()
                    - y[rng.integers(0, len(y), len(y))].mean())
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    return float(x.mean() - y.mean()), float(lo), float(hi)
