"""Cosines between the unit-norm columns of two dictionaries, in blocks, and their matchings.

Dictionaries are (d, n) matrices of unit-norm columns; cosines are signed. The (n_a, n_b) matrix
of all cosines is formed `CHUNK` columns of `a` at a time, so 46,080-element dictionaries never
hold it whole (2,048 x 46,080 floats = 377 MB per block).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from e2e.config_methods import hungarian_refusal

CHUNK = 2048


@torch.no_grad()
def cosine_blocks(a: torch.Tensor, b: torch.Tensor | None = None, exclude_self: bool = False
                  ) -> Iterator[tuple[int, torch.Tensor]]:
    """(i, the block `a[:, i:i + CHUNK].T @ b`) (b defaults to a), in order of i; with
    `exclude_self` (b = a) each column's cosine with itself is -inf."""
    other = a if b is None else b
    for i in range(0, a.shape[1], CHUNK):
        block = a[:, i:i + CHUNK].T @ other
        if exclude_self:
            rows = torch.arange(block.shape[0], device=block.device)
            block[rows, rows + i] = -float("inf")
        yield i, block


def max_cosines(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """For each column of `a` (d, n_a), its largest cosine to a column of `b` (d, n_b); with
    `b=None`, to another column of `a` (the diagonal excluded)."""
    return torch.cat([blk.max(1).values for _, blk in cosine_blocks(a, b, exclude_self=b is None)])


def argmax_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each column of `a`, the index of the column of `b` with the largest cosine."""
    return torch.cat([blk.argmax(1) for _, blk in cosine_blocks(a, b)])


def hungarian_pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-to-one matching of a's and b's columns maximising the summed cosine; ValueError
    above `HUNGARIAN_MAX_ELEMENTS` (the config refuses such MFR cells before they start)."""
    from scipy.optimize import linear_sum_assignment

    refusal = hungarian_refusal(max(a.shape[1], b.shape[1]))
    if refusal:
        raise ValueError(refusal)

    cos = (a.T @ b).detach().double().cpu().numpy()
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return torch.as_tensor(rows, device=a.device), torch.as_tensor(cols, device=a.device)


def top_cosines(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each column of `a` (d, n_a), the k largest cosines to columns of `b` (d, n_b) and
    their indices in b, each (n_a, k), descending."""
    vals, idx = [], []
    for _, blk in cosine_blocks(a, b):
        top = blk.topk(min(k, b.shape[1]), dim=1)
        vals.append(top.values)
        idx.append(top.indices)
    return torch.cat(vals), torch.cat(idx)
