"""The one place that builds an SAE of a cell's `sae` config section."""

from __future__ import annotations

from e2e.arch.batchtopk import BatchTopKSAE, MatryoshkaSAE
from e2e.arch.config import SAEConfig
from e2e.arch.jumprelu import JumpReLUSAE
from e2e.sae import SAE


def build_sae(cfg: SAEConfig, d_in: int, n_dict: int) -> SAE:
    """An SAE of `cfg.activation` with its options (initialised from torch's global RNG, as
    `e2e.sae.SAE`: the caller seeds it)."""
    if cfg.activation == "relu":
        return SAE(d_in, n_dict)
    if cfg.activation == "topk":
        return SAE(d_in, n_dict, cfg.k)
    if cfg.activation == "batchtopk":
        return BatchTopKSAE(d_in, n_dict, cfg.k, cfg.topk_threshold_lr)
    if cfg.activation == "matryoshka":
        return MatryoshkaSAE(d_in, n_dict, cfg.k, cfg.widths(n_dict)[:-1],
                             cfg.topk_threshold_lr)
    return JumpReLUSAE(d_in, n_dict, cfg.jumprelu_bandwidth, cfg.jumprelu_init_threshold)


def auxk_k(cfg: SAEConfig, d_in: int) -> int:
    """AuxK's k_aux: `auxk_k`, or d_in // 2 (Gao et al. 2024, App. B.1) when 0."""
    return cfg.auxk_k or max(1, d_in // 2)
