"""Seeded generators for everything a cell draws in order (document order, synthetic batches,
DB-KSVD's permutations), so that a resumed cell draws exactly what an uninterrupted one would."""

from __future__ import annotations

import torch

# A prime stride keeps the streams of nearby seeds apart: seed s, index i -> s * STRIDE + i.
SEED_MIX = 1_000_003


def generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for draw `index` (an epoch, a batch, ...) of the stream of `seed`."""
    return torch.Generator().manual_seed(seed * SEED_MIX + index)
