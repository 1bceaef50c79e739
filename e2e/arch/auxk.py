"""AuxK (Gao et al. 2024, arXiv 2406.04093, App. A.2): the auxiliary loss that revives dead
latents of the TopK family, as SAELens 6.54 computes it (`calculate_topk_aux_loss`) in this
project's units.

A latent is dead when it has not fired for `auxk_dead_tokens` tokens (Gao: 10M). With e the
residual x - x_hat (detached: only the dead latents learn from it), the top k_aux dead
pre-activations of each token (raw values, zeros elsewhere) decode without bias to
e_hat = z_aux D^T, and
  L_aux = min(n_dead / k_aux, 1) * mean((e_hat - e)^2)
(per-element MSE, the paper's local reconstruction convention, so its coefficient is relative
to the local MSE's as Gao's alpha = 1/32 is; SAELens sums over d_in). k_aux = min(auxk_k,
n_dead), auxk_k 0 meaning d_in // 2 (Gao App. B.1). Under every loss it reconstructs the hook's
residual: it is a local term added to the setting's loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def auxk_loss(x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor,
              dict_elements: torch.Tensor, k_aux: int) -> torch.Tensor:
    """L_aux of activations x and reconstruction x_hat (..., d_in), pre-activations pre
    (..., n_dict), dead (n_dict,) bool, dictionary (d_in, n_dict); 0 when none is dead."""
    n_dead = int(dead.sum())  # one host sync per step (SAELens's too)
    if n_dead == 0:
        return x.new_zeros(())
    k = min(k_aux, n_dead)
    scale = min(n_dead / k_aux, 1.0)
    top = torch.where(dead, pre, -torch.inf).topk(k, dim=-1)
    z_aux = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    residual = (x - x_hat).detach()
    return scale * F.mse_loss(F.linear(z_aux, dict_elements), residual)


class DeadTracker:
    """Tokens since each latent last fired; dead once that reaches `window_tokens`."""

    def __init__(self, n_dict: int, window_tokens: int, device: str | torch.device = "cpu"):
        self.window_tokens = window_tokens
        self.since = torch.zeros(n_dict, dtype=torch.long, device=device)

    @property
    def dead(self) -> torch.Tensor:
        return self.since >= self.window_tokens

    def update(self, c: torch.Tensor) -> None:
        fired = (c.detach().reshape(-1, c.shape[-1]) != 0).any(0)
        n_tokens = c.shape[:-1].numel()
        self.since = torch.where(fired, 0, self.since + n_tokens)

    def state_dict(self) -> dict:
        return {"since": self.since.to("cpu", copy=True)}

    def load_state_dict(self, s: dict) -> None:
        self.since = s["since"].to(self.since.device)
