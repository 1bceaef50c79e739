"""The paper's loss terms and the three training settings (Braun et al. 2024, Sec. 2 and App. A).

Each term is a small function of tensors; `setting_loss` weights and sums them and returns
`(total, terms)` so every term can be logged under its own name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from e2e.config import LossConfig
from e2e.kernels import CleanTarget, Compiled, kl_sum, unembed_kl_sum


def _lp_norm(c: torch.Tensor, p: float, d_in: int) -> torch.Tensor:
    return torch.linalg.vector_norm(c, ord=p, dim=-1).mean() / d_in


# Compiled, the norm and its backward are one pass over the codes each instead of four (the
# fp32 copy, the norm; the sign, the product): 3.7 of 16.6 ms of a small shape's SAE step
# (128 x 2,048, 1,024 tokens, bf16) on 2 CPU cores (docs/performance.md).
_sparsity = Compiled(_lp_norm)


def sparsity_loss(c: torch.Tensor, p: float, d_in: int) -> torch.Tensor:
    """Lp norm of the codes over dictionary units, mean over tokens, divided by d_in."""
    return _sparsity(c, p, d_in)


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-element mean squared error: mean((pred - target)^2)."""
    return F.mse_loss(pred, target)


def kl_orig_sae(orig: CleanTarget | torch.Tensor, sae: torch.Tensor) -> torch.Tensor:
    """KL(p_orig || p_sae) of next-token distributions, summed over vocab, mean over tokens
    (Braun et al. 2024, Sec. 2, Eq. 3).

    With logits (..., vocab) on both sides, the plain formula. With a `CleanTarget`, `sae` is
    the SAE-patched model's final normalised residual (..., d_model) and the unembedding is
    fused into the KL (`e2e.kernels.kl`): the training step's form, same value and gradient
    (tests/test_losses.py), no (tokens, vocab) tensor kept.
    """
    if not isinstance(orig, CleanTarget):
        log_p = F.log_softmax(orig.reshape(-1, orig.shape[-1]).float(), dim=-1)
        log_q = F.log_softmax(sae.reshape(-1, sae.shape[-1]).float(), dim=-1)
        return kl_sum(log_p, log_q) / log_p.shape[0]
    return unembed_kl_sum(orig, sae.reshape(-1, sae.shape[-1])) / orig.n_tokens


def downstream_mse(resids_sae: list[torch.Tensor], resids_orig: list[torch.Tensor],
                   total_coeff: float) -> torch.Tensor:
    """Sum over later resid_pre positions of MSE, each weighted total_coeff / n_positions."""
    if not resids_sae:
        raise ValueError("downstream MSE needs at least one later layer")
    weight = total_coeff / len(resids_sae)
    return sum(weight * mse_loss(s, o) for s, o in zip(resids_sae, resids_orig, strict=True))


@dataclass(frozen=True)
class LossCoeffs:
    sparsity: float
    local_mse: float
    kl: float
    downstream: float


def loss_coeffs(cfg: LossConfig, layer: int, n_layers: int) -> LossCoeffs:
    """Resolves the paper's defaults for the setting; explicit config values win.

    local = MSE 1 + λ·sparsity; e2e = KL 1 + λ·sparsity; e2e_ds = KL 0.5 + downstream + λ·sparsity,
    where the downstream total is 2.5, or 0.05 when only one later block remains (GPT-2 layer 10).
    """
    defaults = {
        "local": (1.0, 0.0, 0.0),
        "e2e": (0.0, 1.0, 0.0),
        "e2e_ds": (0.0, 0.5, 2.5 if layer < n_layers - 2 else 0.05),
    }[cfg.setting]
    pick = lambda given, default: default if given is None else given  # noqa: E731
    return LossCoeffs(
        sparsity=cfg.sparsity_coeff,
        local_mse=pick(cfg.local_mse_coeff, defaults[0]),
        kl=pick(cfg.kl_coeff, defaults[1]),
        downstream=pick(cfg.downstream_coeff, defaults[2]),
    )


def setting_loss(coeffs: LossCoeffs, *, p: float, x: torch.Tensor, x_hat: torch.Tensor,
                 c: torch.Tensor, logits_orig: CleanTarget | torch.Tensor | None = None,
                 logits_sae: torch.Tensor | None = None,
                 resids_orig: list[torch.Tensor] | None = None,
                 resids_sae: list[torch.Tensor] | None = None,
                 sparsity: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the terms with a non-zero coefficient; returns (total, unweighted terms).

    `sparsity`: the architecture's own sparsity term (JumpReLU's L0); default the Lp norm of c.
    """
    terms = {"sparsity": sparsity_loss(c, p, x.shape[-1]) if sparsity is None else sparsity}
    total = coeffs.sparsity * terms["sparsity"]
    return reconstruction_loss(coeffs, total, terms, x=x, x_hat=x_hat, logits_orig=logits_orig,
                               logits_sae=logits_sae, resids_orig=resids_orig,
                               resids_sae=resids_sae)


def reconstruction_loss(coeffs: LossCoeffs, total: torch.Tensor | float,
                        terms: dict[str, torch.Tensor], *, x: torch.Tensor,
                        x_hat: torch.Tensor, logits_orig=None, logits_sae=None,
                        resids_orig=None, resids_sae=None, prefix: str = "",
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`total` plus the setting's weighted reconstruction terms (local MSE, KL, downstream MSE)
    of x_hat; each unweighted term goes into `terms` under `prefix` + its name."""
    if coeffs.local_mse:
        terms[prefix + "local_mse"] = mse_loss(x_hat, x)
        total = total + coeffs.local_mse * terms[prefix + "local_mse"]
    if coeffs.kl:
        terms[prefix + "kl_orig_sae"] = kl_orig_sae(logits_orig, logits_sae)
        total = total + coeffs.kl * terms[prefix + "kl_orig_sae"]
    if coeffs.downstream:
        terms[prefix + "downstream_mse"] = downstream_mse(resids_sae, resids_orig,
                                                          coeffs.downstream)
        total = total + terms[prefix + "downstream_mse"]  # already weighted per position
    return total, terms
