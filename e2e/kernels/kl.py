"""The KL of the e2e loss with the unembedding fused into it: KL(p_clean || p_sae) and its
gradient in chunks of tokens, from the two final normalised residuals and the frozen
unembedding, no (tokens, vocab) tensor kept (`e2e.losses.kl_orig_sae` is its entry)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from e2e.kernels.compiled import Compiled


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

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits (..., vocab) of final normalised residuals x (..., d_model) under this
        unembedding, soft cap included."""
        return unembed_logits(x, self.weight, self.bias, self.soft_cap)


def soft_cap(z: torch.Tensor, cap: float) -> torch.Tensor:
    """Gemma 2's final logit soft cap, cap * tanh(z / cap), which HF's LM head applies after
    the unembedding; the identity when cap <= 0."""
    return cap * torch.tanh(z / cap) if cap > 0 else z


def unembed_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   cap: float) -> torch.Tensor:
    """Logits (..., vocab) of final normalised residuals x (..., d_model): x W^T + b, then the
    soft cap."""
    return soft_cap(F.linear(x, weight, bias), cap)


def kl_sum(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum over tokens and vocab of p (log p - log q): KL(p || q) summed over the tokens of
    log-probabilities (tokens, vocab)."""
    return (log_p.exp() * (log_p - log_q)).sum()


def _kl_chunk(z_q: torch.Tensor, z_p: torch.Tensor, cap: float, grad: bool):
    """sum over a chunk's tokens of KL(softmax(z_p) || softmax(z_q)), in fp32, and its gradient
    with respect to the raw logits z_q (in z_q's dtype; None unless `grad`), for raw logits
    (tokens, vocab) that the soft cap (cap > 0) maps to cap * tanh(z / cap).

    Each side's exponentials are taken once: with y = z - max z, e = exp(y) and s = sum e,
    KL = sum p (y_p - y_q) - log s_p + log s_q and the gradient is q - p, p = e_p / s_p
    (`kl_sum` over two log-softmaxes takes them twice: 1.2 against 0.7 ms for 256 x 4,096
    logits compiled on 2 CPU cores). The maxima cancel inside y_p - y_q, so logits far from
    0 cost no precision."""
    z_q, z_p = soft_cap(z_q.float(), cap), soft_cap(z_p.float(), cap)
    y_q, y_p = z_q - z_q.amax(-1, keepdim=True), z_p - z_p.amax(-1, keepdim=True)
    e_q, e_p = y_q.exp(), y_p.exp()
    s_q, s_p = e_q.sum(-1, keepdim=True), e_p.sum(-1, keepdim=True)
    p = e_p / s_p
    kl = ((p * (y_p - y_q)).sum(-1, keepdim=True) - s_p.log() + s_q.log()).sum()
    if not grad:
        return kl, None
    g = e_q / s_q - p
    if cap > 0:  # d/dz of cap * tanh(z / cap) = 1 - (capped z / cap)^2
        g = g * (1 - (z_q / cap).square())
    return kl, g


# Compiled, the chunk's softmaxes, KL and gradient are a few passes over its logits instead of
# about ten: 7x faster on 2 CPU cores (docs/performance.md).
_kl_core = Compiled(_kl_chunk)


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
                kl, g = _kl_core(z_q, z_p, cap, grad is not None)
                total += kl
                if grad is not None:
                    grad[s:s + chunk] = (g.to(dtype) @ w).to(grad.dtype)
        ctx.grad = grad
        return total

    @staticmethod
    def backward(ctx, grad_total):
        return ctx.grad * grad_total, None, None, None, None, None


def unembed_kl_sum(orig: CleanTarget, x_sae: torch.Tensor) -> torch.Tensor:
    """sum over tokens of KL(p_orig || p_sae), p_sae the softmax of the unembedded x_sae
    (tokens, d_model); the gradient reaches x_sae only. ValueError when the token counts
    differ."""
    if x_sae.shape[0] != orig.n_tokens:
        raise ValueError(f"{x_sae.shape[0]} SAE tokens against {orig.n_tokens} clean ones")
    chunk = kl_chunk_tokens(x_sae.device, orig.weight.shape[0])
    return _UnembedKL.apply(x_sae, orig.x, orig.weight, orig.bias, orig.soft_cap, chunk)
