"""BatchTopK (Bussmann et al. 2024, arXiv 2412.06410) and Matryoshka BatchTopK (Bussmann et al.
2025, arXiv 2503.17547) SAEs, as SAELens 6.54 trains and saves them.

Training codes keep the k * tokens largest ReLU'd pre-activations of the whole batch (SAELens's
`BatchTopK`); a scalar threshold follows the smallest kept code by a moving average,
theta <- (1 - r) theta + r min(c > 0), after every training forward, and inference codes are
JumpReLU codes at that threshold: relu(pre) * (pre > theta). Saved, both are SAELens `jumprelu`
SAEs with theta in every element of `threshold` (SAELens's
`process_state_dict_for_saving_inference`). Matryoshka adds, for every inner prefix of width
m, the reconstruction from codes c[..., :m] and elements D[:, :m] (plus b_d) to the loss, each
scored by the setting's reconstruction terms (`e2e.train.member`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from e2e.arch.jumprelu import JumpReLUSAE
from e2e.sae import SAE, Coded


def batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Codes (..., n_dict) keeping the k * tokens largest relu(pre) of the whole batch (ties
    as torch.topk breaks them); tokens = every leading position."""
    acts = F.relu(pre)
    flat = acts.flatten()
    top = flat.topk(k * acts.shape[:-1].numel())
    return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)


class BatchTopKSAE(SAE):
    """The paper's SAE (unit-norm dictionary, no pre-encoder bias) with BatchTopK codes."""

    architectures = ()  # saved as, and loaded back as, a JumpReLU SAE
    training_architecture = "batchtopk"  # SAELens's name for how it was trained

    def __init__(self, d_in: int, n_dict: int, k: int, threshold_lr: float = 0.01):
        super().__init__(d_in, n_dict)
        if not 1 <= k <= n_dict:
            raise ValueError(f"sae.k={k} is invalid: must be in [1, {n_dict}]")
        self.batch_k, self.threshold_lr = k, threshold_lr
        # float64 as SAELens keeps it: a moving average of small numbers over many steps
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return F.relu(pre) * (pre > self.threshold.to(pre.dtype))

    def train_forward(self, x: torch.Tensor) -> Coded:
        pre = self.encoder(x)
        c = batch_topk(pre, self.batch_k)
        self.update_threshold(c)
        return Coded(self.decode(c), c, pre)

    @torch.no_grad()
    def update_threshold(self, c: torch.Tensor) -> None:
        """theta <- (1 - r) theta + r * (smallest positive code), when any code is positive.
        Kept on the device (no host sync): a masked min with +inf where c <= 0."""
        smallest = torch.where(c > 0, c, torch.inf).min().double()
        new = (1 - self.threshold_lr) * self.threshold + self.threshold_lr * smallest
        self.threshold.copy_(torch.where(torch.isfinite(smallest), new, self.threshold))

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().saelens_tensors(),
                "threshold": torch.full((self.n_dict,), float(self.threshold))}

    def training_details(self) -> dict[str, Any]:
        return {"k": self.batch_k, "topk_threshold_lr": self.threshold_lr}

    def saelens_config(self) -> dict[str, Any]:
        return {**JumpReLUSAE.inference_config(),
                "training_architecture": self.training_architecture,
                "training_architecture_details": self.training_details()}


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK whose inner prefixes of `widths` (increasing, the last < n_dict) also
    reconstruct."""

    training_architecture = "matryoshka_batchtopk"

    def __init__(self, d_in: int, n_dict: int, k: int, widths: list[int],
                 threshold_lr: float = 0.01):
        super().__init__(d_in, n_dict, k, threshold_lr)
        if not all(a < b for a, b in zip([0, *widths], [*widths, n_dict], strict=True)):
            raise ValueError(f"matryoshka widths {widths} must increase within (0, {n_dict})")
        self.widths = list(widths)

    def nested_reconstructions(self, coded: Coded) -> dict[str, torch.Tensor]:
        """`prefix<m>`: x_hat of the inner prefix of width m, c[..., :m] D[:, :m]^T + b_d,
        built up level by level."""
        d = self.dict_elements
        out, recon, prev = {}, self.decoder.bias, 0
        for m in self.widths:
            recon = recon + F.linear(coded.c[..., prev:m], d[:, prev:m])
            out[f"prefix{m}"] = recon
            prev = m
        return out

    def training_details(self) -> dict[str, Any]:
        return {**super().training_details(), "matryoshka_widths": [*self.widths, self.n_dict]}
