"""Karvonen's KL fine-tune as his code defines it (arXiv 2503.17272; adamkarvonen/sae_kl_finetune),
beside `loss.balance_kl`'s fixed scale measured once at the start:

- `loss.balance_kl_every_step`: every step, `alpha_kl = (mse / (kl + 1e-8)).detach()` of the
  batch, and the loss is `0.5 * (alpha_kl * KL + MSE)` plus the sparsity term (with the recipe's
  `kl_coeff = local_mse_coeff = 0.5`);
- `loss.track_l0` (ReLU SAEs): an L0-tracking controller on λ: after each optimizer step, λ is
  multiplied by 0.999 when the step's L0 is below its target (the starting dictionary's L0 on
  the eval batches: the parent's), by 1.001 when above.
"""

from __future__ import annotations

import torch


def rebalance_kl(loss: torch.Tensor, terms: dict[str, torch.Tensor], kl_coeff: float,
                 prefix: str = "") -> torch.Tensor:
    """`loss` with its KL term `kl_coeff * KL` replaced by `kl_coeff * alpha_kl * KL` (the
    terms under `prefix`: a nested reconstruction's); adds `<prefix>kl_alpha` to `terms`."""
    kl, mse = terms[prefix + "kl_orig_sae"], terms[prefix + "local_mse"]
    alpha = (mse / (kl + 1e-8)).detach()
    terms[prefix + "kl_alpha"] = alpha
    return loss + kl_coeff * (alpha - 1) * kl


class L0Controller:
    """λ's multiplier; its target is set by the start evaluation, its state checkpointed."""

    DOWN, UP = 0.999, 1.001

    def __init__(self, device: torch.device):
        self.target: float | None = None
        # tensors: a step never waits for the host
        self.mult = torch.ones((), dtype=torch.float64, device=device)
        self._l0 = torch.zeros((), dtype=torch.float64, device=device)

    def observe(self, l0: torch.Tensor, weight: float) -> None:
        """Adds `weight` times a micro-batch's L0 to the step's mean."""
        self._l0 += weight * l0.detach().double()

    def step(self) -> None:
        if self.target is not None:
            self.mult *= torch.where(self._l0 < self.target, self.DOWN, self.UP)
        self._l0.zero_()

    def state_dict(self) -> dict:
        return {"target": self.target, "mult": float(self.mult)}

    def load_state_dict(self, s: dict) -> None:
        self.target = s["target"]
        self.mult.fill_(s["mult"])
