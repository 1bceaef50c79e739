"""The JumpReLU SAE (Rajamanoharan et al. 2024, arXiv 2407.14435; Gemma Scope, arXiv
2408.05147), as SAELens 6.54 trains it (`JumpReLUTrainingSAE`, sparsity mode "step", the
straight-through estimator to the thresholds only, as DeepMind's).

Codes c_i = pre_i * H(pre_i - theta_i) with per-element thresholds theta >= 0 (kept so by
clamping before every training forward, as SAELens). H has zero gradient; the estimator uses
a rectangle kernel of width epsilon (the bandwidth), K(u) = 1 if |u| < 1/2:
  d c_i / d theta_i    = -(theta_i / epsilon) K((pre_i - theta_i) / epsilon)   (paper eq. 11)
  d H_i / d theta_i    = -(1 / epsilon) K((pre_i - theta_i) / epsilon)        (paper eq. 12)
  d c_i / d pre_i      = H(pre_i - theta_i)
The sparsity term is L0 = sum_i H(pre_i - theta_i), mean over tokens, divided by d_in (the
paper's convention for its Lp sparsity, p = 0): λ here is SAELens's `l0_coefficient` times d_in.
Inference codes are SAELens's JumpReLU forward: relu(pre) * (pre > theta).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e2e.sae import SAE, Coded


def _kernel(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """K((pre - theta) / epsilon) / epsilon: the rectangle kernel, 1/epsilon within
    epsilon / 2 of the threshold."""
    u = (pre - threshold) / bandwidth
    return ((u > -0.5) & (u < 0.5)).to(pre.dtype) / bandwidth


def _sum_to_threshold(g: torch.Tensor) -> torch.Tensor:
    return g.reshape(-1, g.shape[-1]).sum(0)  # over every token: (n_dict,)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        d_theta = -threshold * _kernel(pre, threshold, ctx.bandwidth) * grad
        return (pre > threshold) * grad, _sum_to_threshold(d_theta), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        d_theta = -_kernel(pre, threshold, ctx.bandwidth) * grad
        return None, _sum_to_threshold(d_theta), None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """pre * H(pre - theta), with the straight-through gradient to theta."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """H(pre - theta) (0 or 1), with the straight-through gradient to theta only."""
    return _Step.apply(pre, threshold, bandwidth)


class JumpReLUSAE(SAE):
    """The paper's SAE (unit-norm dictionary, no pre-encoder bias) with JumpReLU codes."""

    architectures = ("jumprelu",)

    def __init__(self, d_in: int, n_dict: int, bandwidth: float = 0.05,
                 init_threshold: float = 0.01):
        super().__init__(d_in, n_dict)
        self.bandwidth = bandwidth
        self.threshold = nn.Parameter(torch.full((n_dict,), float(init_threshold)))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return F.relu(pre) * (pre > self.threshold.to(pre.dtype))

    def train_forward(self, x: torch.Tensor) -> Coded:
        with torch.no_grad():
            # a negative threshold would pass negative pre-activations; projected, not
            # clamped in the graph, which would stop its gradient at 0 (SAELens)
            self.threshold.clamp_(min=0.0)
        pre = self.encoder(x)
        c = jumprelu(pre, self.threshold.to(pre.dtype), self.bandwidth)
        return Coded(self.decode(c), c, pre)

    def sparsity_loss(self, coded: Coded, p: float) -> torch.Tensor:
        """L0 (mean over tokens) / d_in; `p` is not used (this is p = 0)."""
        h = step(coded.pre, self.threshold.to(coded.pre.dtype), self.bandwidth)
        return h.sum(-1).mean() / self.d_in

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().saelens_tensors(),
                "threshold": self.threshold.detach().float().contiguous().cpu()}

    @staticmethod
    def inference_config() -> dict[str, Any]:
        return {"architecture": "jumprelu", "activation_fn_str": "relu",
                "apply_b_dec_to_input": False, "finetuning_scaling_factor": False}

    def saelens_config(self) -> dict[str, Any]:
        return {**self.inference_config(), "training_architecture": "jumprelu",
                "training_architecture_details": {
                    "jumprelu_bandwidth": self.bandwidth, "jumprelu_sparsity_loss_mode": "step",
                    "jumprelu_ste_to_input": False}}

    @classmethod
    def from_saelens(cls, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]
                     ) -> JumpReLUSAE:
        if cfg.get("apply_b_dec_to_input"):
            raise ValueError("SAEs that subtract b_dec from the input are not this model")
        sae = cls(cfg["d_in"], cfg["d_sae"])
        sae.load_state_dict({
            "encoder.weight": tensors["W_enc"].T, "encoder.bias": tensors["b_enc"],
            "decoder.weight": tensors["W_dec"].T, "decoder.bias": tensors["b_dec"],
            "threshold": tensors["threshold"]})
        return sae
