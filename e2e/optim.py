"""Adam and the learning-rate schedule shared by SAE cells and the small LM's pre-training."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, warmup: int, total: int, min_factor: float) -> float:
    """LR factor at optimizer `step`: linear warmup from 0 over `warmup` steps, then cosine
    decay to `min_factor` at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return min_factor + (1 - min_factor) * cosine


def make_adam(params, lr: float) -> torch.optim.Adam:
    # Fused Adam: one kernel over all parameters, on CUDA and on CPU (where it took 22 ms
    # instead of foreach's 296 ms for a 46,080 x 768 dictionary's 35M weights).
    return torch.optim.Adam(params, lr=lr, fused=True)
