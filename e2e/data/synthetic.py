"""Activations with known features, generated on the fly (no language model).

The MFR authors' generator (`generate_synthetic_data`): a Gaussian dictionary `F` of
`n_features` columns in `d` dimensions (not normalised); each sample picks one of `n_groups`
groups of `group_size` consecutive features uniformly, draws `active` of the group's features
without replacement with weights decay**i (i = position in the group), and coefficients
U[0, 1): x = F c (+ Gaussian noise). Features beyond n_groups * group_size never fire.

Batch i of a stream depends only on (seed, i), so a stream resumes exactly from its batch
counter.
"""

from __future__ import annotations

import torch

from e2e.analysis.cosine import hungarian_pairs, max_cosines
from e2e.config import SyntheticConfig
from e2e.rng import generator

RECOVERED_COS = 0.9


def true_features(cfg: SyntheticConfig) -> torch.Tensor:
    """The ground-truth dictionary, (d, n_features), from `cfg.truth_seed` alone."""
    g = torch.Generator().manual_seed(cfg.truth_seed)
    return torch.randn(cfg.d, cfg.n_features, generator=g)


def sample(cfg: SyntheticConfig, truth: torch.Tensor, n: int, g: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples (n, d) and their codes (n, n_features), drawn with generator g (CPU)."""
    group = torch.randint(cfg.n_groups, (n,), generator=g)
    weights = cfg.decay ** torch.arange(cfg.group_size, dtype=torch.float64)
    if cfg.shared_support_per_batch:  # one support per group for the whole batch
        support = torch.multinomial(weights.expand(cfg.n_groups, -1), cfg.active,
                                    generator=g)[group]
    else:
        support = torch.multinomial(weights.expand(n, -1), cfg.active, generator=g)
    coeffs = torch.rand(n, cfg.active, generator=g)
    codes = torch.zeros(n, cfg.n_features).scatter_(1, group[:, None] * cfg.group_size
                                                    + support, coeffs)
    x = codes @ truth.T
    if cfg.noise_std:
        x = x + cfg.noise_std * torch.randn(n, cfg.d, generator=g)
    return x, codes


class SyntheticStream:
    """Batches of synthetic activations; the state is the batch counter."""

    def __init__(self, cfg: SyntheticConfig, seed: int):
        self.cfg, self.seed, self.batch = cfg, seed, 0
        self.truth = true_features(cfg)

    def next_batch(self, n: int) -> torch.Tensor:
        g = generator(self.seed, self.batch)
        self.batch += 1
        return sample(self.cfg, self.truth, n, g)[0]

    def state_dict(self) -> dict:
        return {"batch": self.batch}

    def load_state_dict(self, s: dict) -> None:
        self.batch = s["batch"]


@torch.no_grad()
def truth_metrics(dictionary: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """How well a unit-norm dictionary (d, n) recovers the true features (d, F).

    `mmcs_true`: mean signed cosine of the Hungarian (one-to-one) matching between true features
    and dictionary elements, over the min(n, F) matched pairs; `recovered_true`: the fraction of
    true features whose best-matching element (any, not one-to-one) has cosine > 0.9.
    """
    t = torch.nn.functional.normalize(truth.to(dictionary), dim=0)
    rows, cols = hungarian_pairs(t, dictionary)
    mmcs = (t[:, rows] * dictionary[:, cols]).sum(0).mean()
    best = max_cosines(t, dictionary)
    return {"mmcs_true": float(mmcs), "recovered_true": float((best > RECOVERED_COS).float()
                                                              .mean())}
