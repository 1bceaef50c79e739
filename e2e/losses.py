"""The paper's loss terms and the three training settings (Braun et al. 2024, Sec. 2 and App. A).

Each term is a small function of tensors; `setting_loss` weights and sums them and returns
`(total, terms)` so every term can be logged under its own name.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from e2e.config import LossConfig


def sparsity_loss(c: torch.Tensor, p: float, d_in: int) -> torch.Tensor:
    """Lp norm of the codes over dictionary units, mean over tokens, divided by d_in."""
    return torch.linalg.vector_norm(c, ord=p, dim=-1).mean() / d_in


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-element mean squared error: mean((pred - target)^2)."""
    return F.mse_loss(pred, target)


# Tokens in one chunk of the fused KL: on a CPU at most 256 and at most 2**23 logits (32 MiB in
# fp32: glibc serves smaller blocks from its heap again, larger ones are fresh pages to fault
# in); a GPU takes 1,024 (a few tensors of 1,024 x vocab live: 0.2 GB each for GPT-2's).
def kl_chunk_tokens(device: torch.device, vocab: int) -> int:
    return 1024 if device.type == "cuda" else max(16, min(256, 2**23 // vocab))


@dataclass(frozen=True)
class CleanTarget:
    """The clean side of the KL in its smallest exact form: the clean model's final normalised
    residual (tokens, d_model) and the frozen unembedding, from which each chunk of clean
    logits is recomputed (d_model numbers a token instead of vocab)."""

    x: torch.Tensor  # (tokens, d_model): the unembedding's input on the clean pass
    weight: torch.Tensor  # (vocab, d_model)
    bias: torch.Tensor | None  # (vocab,)
    soft_cap: float = 0.0  # logits -> cap * tanh(logits / cap) when > 0 (Gemma 2)

    @property
    def n_tokens(self) -> int:
        return self.x.shape[0]


def soft_cap(z: torch.Tensor, cap: float) -> torch.Tensor:
    """Gemma 2's final logit soft cap, cap * tanh(z / cap), which HF's LM head applies after
    the unembedding; the identity when cap <= 0."""
    return cap * torch.tanh(z / cap) if cap > 0 else z


def _kl_chunk(z_q: torch.Tensor, z_p: torch.Tensor, cap: float, grad: bool):
    """sum over a chunk's tokens of KL(softmax(z_p) || softmax(z_q)), in fp32, and its gradient
    with respect to the raw logits z_q (in z_q's dtype; None unless `grad`), for raw logits
    (tokens, vocab) that the soft cap (cap > 0) maps to cap * tanh(z / cap)."""
    z_q, z_p = soft_cap(z_q.float(), cap), soft_cap(z_p.float(), cap)
    log_q, log_p = F.log_softmax(z_q, dim=-1), F.log_softmax(z_p, dim=-1)
    p = log_p.exp()
    kl = (p * (log_p - log_q)).sum()
    if not grad:
        return kl, None
    g = log_q.exp() - p
    if cap > 0:  # d/dz of cap * tanh(z / cap) = 1 - (capped z / cap)^2
        g = g * (1 - (z_q / cap).square())
    return kl, g


# Compiled (inductor), the chunk's softmaxes, KL and gradient are two passes over its logits
# instead of about ten: 7x faster on 2 CPU cores (docs/performance.md). Compiled on first use;
# TORCH_COMPILE_DISABLE=1 (PyTorch's own switch) runs it eagerly, as does a process where
# compiling fails (a container without a C++ compiler), after one warning.
_kl_core = torch.compile(_kl_chunk, dynamic=False)


def _kl_chunk_compiled(*args):
    global _kl_core
    try:
        return _kl_core(*args)
    except Exception as e:
        if _kl_core is _kl_chunk:
            raise
        warnings.warn(f"the KL's compiled core failed ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200]}); running it eagerly", stacklevel=2)
        _kl_core = _kl_chunk
        return _kl_chunk(*args)


class _UnembedKL(torch.autograd.Function):
    """sum over tokens of KL(softmax(x_clean W^T + b) || softmax(x_sae W^T + b)), in chunks of
    tokens. Its gradient, (q - p) W per token (times the soft cap's derivative), is computed
    in the forward pass, chunk by chunk (as Liger Kernel's fused linear losses do): no
    (tokens, vocab) tensor outlives its chunk, and the backward is one multiplication."""

    @staticmethod
    def forward(ctx, x_sae, x_clean, weight, bias, cap, chunk):
        dtype = (torch.get_autocast_dtype(x_sae.device.type)
                 if torch.is_autocast_enabled(x_sae.device.type) else weight.dtype)
        w = weight.to(dtype)  # under autocast the matmuls run in its dtype, the softmax in fp32
        b = None if bias is None else bias.to(dtype)
        grad = torch.empty_like(x_sae) if ctx.needs_input_grad[0] else None
        total = x_sae.new_zeros((), dtype=torch.float32)
        with torch.autocast(x_sae.device.type, enabled=False):
            for s in range(0, x_sae.shape[0], chunk):
                z_q = F.linear(x_sae[s:s + chunk].to(dtype), w, b)
                z_p = F.linear(x_clean[s:s + chunk].to(dtype), w, b)
                kl, g = _kl_chunk_compiled(z_q, z_p, cap, grad is not None)
                total += kl
                if grad is not None:
                    grad[s:s + chunk] = (g.to(dtype) @ w).to(grad.dtype)
        ctx.grad = grad
        return total

    @staticmethod
    def backward(ctx, grad_total):
        return ctx.grad * grad_total, None, None, None, None, None


def kl_orig_sae(orig: CleanTarget | torch.Tensor, sae: torch.Tensor) -> torch.Tensor:
    """KL(p_orig || p_sae) of next-token distributions, summed over vocab, mean over tokens
    (Braun et al. 2024, Sec. 2, Eq. 3).

    With logits (..., vocab) on both sides, the plain formula. With a `CleanTarget`, `sae` is
    the SAE-patched model's final normalised residual (..., d_model) and the unembedding is
    fused into the KL (`_UnembedKL`): the training step's form, same value and gradient
    (tests/test_losses.py), no (tokens, vocab) tensor kept.
    """
    if not isinstance(orig, CleanTarget):
        log_p = F.log_softmax(orig.reshape(-1, orig.shape[-1]).float(), dim=-1)
        log_q = F.log_softmax(sae.reshape(-1, sae.shape[-1]).float(), dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    x = sae.reshape(-1, sae.shape[-1])
    if x.shape[0] != orig.n_tokens:
        raise ValueError(f"{x.shape[0]} SAE tokens against {orig.n_tokens} clean ones")
    chunk = kl_chunk_tokens(x.device, orig.weight.shape[0])
    return _UnembedKL.apply(x, orig.x, orig.weight, orig.bias, orig.soft_cap,
                            chunk) / orig.n_tokens


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
