"""Similarity of dictionaries and the Mutual Feature Regularization penalty (Marks et al. 2024).

Dictionaries are (d_in, n) matrices of unit-norm columns; cosines are signed, never matched by
absolute value. Every similarity picks its pairs of elements without gradient (argmax, or the
Hungarian matching on a detached copy, as the authors' final code) and then differentiates the
mean cosine of the picked pairs, so the matrix of all cosines is never kept for backward; the
argmax runs in blocks of columns (`e2e.analysis.cosine`), so 46,080-element dictionaries fit.
"""

from __future__ import annotations

import itertools
import math

import torch

from e2e.analysis.cosine import argmax_cosines, hungarian_pairs


def _picked(a: torch.Tensor, b: torch.Tensor, rows, cols) -> torch.Tensor:
    """Mean cosine of the pairs (a[:, rows[i]], b[:, cols[i]]), differentiable in a and b."""
    return (a[:, rows] * b[:, cols]).sum(0).mean()


def max_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over a's elements of the largest cosine to any of b's (directional: a -> b)."""
    return _picked(a, b, torch.arange(a.shape[1], device=a.device), argmax_cosines(a, b))


def symmetric_max_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """½ (max a -> b + max b -> a)."""
    return 0.5 * (max_similarity(a, b) + max_similarity(b, a))


def hungarian_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean cosine of the one-to-one matched pairs (the MFR authors' MMCS at their HEAD)."""
    return _picked(a, b, *hungarian_pairs(a, b))


SIMILARITY = {"hungarian": hungarian_similarity, "max": max_similarity,
              "symmetric_max": symmetric_max_similarity}


def mean_pairwise_similarity(dicts: list[torch.Tensor], similarity: str) -> torch.Tensor:
    """Mean over all pairs (a, b), a < b, of similarity(D_a, D_b)."""
    fn = SIMILARITY[similarity]
    sims = [fn(a, b) for a, b in itertools.combinations(dicts, 2)]
    return torch.stack(sims).mean()


def penalty(dicts: list[torch.Tensor], similarity: str) -> torch.Tensor:
    """Mean over pairs of (1 - similarity): 0 when every pair of dictionaries agrees."""
    return 1 - mean_pairwise_similarity(dicts, similarity)


def warmup_weight(step: int, warmup_steps: int) -> float:
    """w(t) = 0.5 (1 + cos(pi (T - t) / T)) for optimizer step t < T, then 1: from 0 to 1."""
    if step >= warmup_steps:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (warmup_steps - step) / warmup_steps))
