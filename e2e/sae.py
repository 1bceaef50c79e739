"""The paper's SAE (ReLU encoder, unit-norm dictionary) and its TopK variant, saved as SAELens's
"standard" and "topk" architectures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e2e.dictionary import Dictionary
from e2e.losses import sparsity_loss


class _UnitNormColumns(torch.autograd.Function):
    """w / ||w||_col (as F.normalize(w, dim=0)) with its gradient in one pass:
    dL/dw = (g - D * sum_rows(g * D)) / ||w||_col.

    Autograd's version of the same formula takes about twice as long on a 768 x 46,080
    dictionary (a division, its backward and the norm's backward, each a pass over the matrix).
    The norms are sqrt(sum_rows(w^2)): `linalg.vector_norm(w, dim=0)` reduces across rows
    up to 9x slower on a CPU (0.50 against 0.055 ms for 128 x 2,048; 8.3 against 1.2 ms for
    768 x 6,144; 67 against 52 ms for 768 x 46,080), the same value to fp32's rounding for
    the fp32 weights trained here.
    """

    @staticmethod
    def forward(ctx, w):
        inv_norm = w.square().sum(0).sqrt_().clamp_min_(1e-12).reciprocal_()
        d = w * inv_norm
        ctx.save_for_backward(d, inv_norm)
        return d

    @staticmethod
    def backward(ctx, grad):
        d, inv_norm = ctx.saved_tensors
        return torch.addcmul(grad, d, (grad * d).sum(0), value=-1).mul_(inv_norm)


def unit_norm_columns(w: torch.Tensor) -> torch.Tensor:
    return _UnitNormColumns.apply(w)


@dataclass(frozen=True)
class Coded:
    """One training forward: reconstruction x_hat (..., d_in), codes c and pre-activations
    pre (..., n_dict)."""

    x_hat: torch.Tensor
    c: torch.Tensor
    pre: torch.Tensor


class SAE(Dictionary):
    """c = ReLU(W_e x + b_e); x_hat = D c + b_d, with D's columns normalised in every forward.

    The raw decoder weight is unconstrained (Braun et al. 2024, Sec. 2); only the dictionary
    derived from it has unit-norm elements. No pre-encoder bias, no resampling.

    With `k`, the TopK SAE (Gao et al. 2024): the k largest pre-activations of each token are
    kept, then ReLU'd, the rest are zero (SAELens's "topk" architecture computes the same). The
    MFR authors' code kept negative values when fewer than k pre-activations were positive;
    codes here are non-negative, as in SAELens.
    """

    architectures = ("standard", "topk")

    def __init__(self, d_in: int, n_dict: int, k: int | None = None):
        super().__init__()
        if k is not None and not 1 <= k <= n_dict:
            raise ValueError(f"sae.k={k} is invalid: must be in [1, {n_dict}] (the dictionary "
                             "size)")
        self.d_in, self.n_dict, self.k = d_in, n_dict, k
        self.encoder = nn.Linear(d_in, n_dict)  # nn.Linear's default init, as the paper
        self.decoder = nn.Linear(n_dict, d_in)  # weight (d_in, n_dict): one column per element
        nn.init.orthogonal_(self.decoder.weight)  # rows orthonormal when d_in < n_dict

    @property
    def dict_elements(self) -> torch.Tensor:
        return unit_norm_columns(self.decoder.weight)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.encoder(x))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Codes (..., n_dict) of pre-activations, as at inference (and as saved)."""
        if self.k is None:
            return F.relu(pre)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, F.relu(top.values))

    # -- training: what the loss of a member (`e2e.train.member`) reads -------------------
    def train_forward(self, x: torch.Tensor) -> Coded:
        """The forward of a training step; an architecture whose training codes differ from
        its inference codes (BatchTopK) or that keeps running statistics overrides it."""
        pre = self.encoder(x)
        c = self.activate(pre)
        return Coded(self.decode(c), c, pre)

    def sparsity_loss(self, coded: Coded, p: float) -> torch.Tensor:
        """The sparsity term: Lp norm of the codes over dictionary units / d_in (Braun et al.
        2024, Sec. 2); JumpReLU's is its L0 (`e2e.arch.jumprelu`)."""
        return sparsity_loss(coded.c, p, self.d_in)

    def nested_reconstructions(self, coded: Coded) -> dict[str, torch.Tensor]:
        """Named reconstructions (..., d_in) that the loss also scores, beside x_hat
        (Matryoshka's inner prefixes); none here."""
        return {}

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        return F.linear(c, self.dict_elements, self.decoder.bias)

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        # W_dec holds the normalised dictionary, so loaders that do not renormalise see the
        # SAE the forward pass used.
        return {
            "W_enc": self.encoder.weight.detach().T.contiguous().cpu(),  # (d_in, d_sae)
            "b_enc": self.encoder.bias.detach().contiguous().cpu(),
            "W_dec": self.dict_elements.detach().T.contiguous().cpu(),  # (d_sae, d_in)
            "b_dec": self.decoder.bias.detach().contiguous().cpu(),
        }

    def saelens_config(self) -> dict[str, Any]:
        return {"architecture": "standard" if self.k is None else "topk",
                **({} if self.k is None else {"k": self.k}), "activation_fn_str": "relu",
                "apply_b_dec_to_input": False, "finetuning_scaling_factor": False}

    @classmethod
    def from_saelens(cls, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SAE:
        if cfg.get("apply_b_dec_to_input"):
            raise ValueError("SAEs that subtract b_dec from the input are not this model")
        sae = cls(cfg["d_in"], cfg["d_sae"], cfg.get("k") if cfg.get("architecture") == "topk"
                  else None)
        sae.load_state_dict({
            "encoder.weight": tensors["W_enc"].T, "encoder.bias": tensors["b_enc"],
            "decoder.weight": tensors["W_dec"].T, "decoder.bias": tensors["b_dec"],
        })
        return sae
