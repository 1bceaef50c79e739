"""Peak GPU memory of one cell, from a model of what a step holds, for the dry run (issue 29:
a cluster grid on a current model says what each cell needs before it is queued).

A step holds: the frozen model's weights (fp32); the SAE's weights, gradients and Adam moments;
for a setting with a KL term, the logit-sized tensors of one chunk of the fused KL (both sides'
logits, softmaxes and the gradient: 5 of chunk · vocab floats, a chunk 1,024 tokens on a GPU,
`e2e.kernels.kl`); and for the backward through the suffix, what autograd saves
per token and per suffix block: the attention scores and probabilities (2 · heads · context
floats) and ≈ 18 · d_model floats of residuals, norms, projections and the MLP's 4 · d_model
hidden pre- and post-activation. Local cells hold the prefix's output only. The sum is
scaled by `OVERHEAD`, fitted to the one measurement there is: an e2e cell at the GPT-2 shape
(layer 6, batch 8 × 1,024, 46,080 elements) peaked at 23 GiB on an H200 (`make gpu-check`,
2026-11-30, docs/performance.md), where the sum gives 16.2 GiB — before the KL was fused: then
all 5 · batch · context · vocab floats were live (7.7 of the 16.2 GiB). Not re-measured on a
GPU since, nor measured on another model.
"""

from __future__ import annotations

import torch

from e2e.config import CellConfig, n_dict_for
from e2e.kernels import kl_chunk_tokens
from jobs.plan.sources import config_int

OVERHEAD = 23 / 16.2  # allocator, temporaries and workspace beyond the saved tensors


def cell_memory_gib(cfg: CellConfig, hf: dict) -> float | None:
    """Estimated peak GiB of one cell on a GPU; None where the HF config lacks a size."""
    d, depth, vocab = (config_int(hf, k) for k in (("hidden_size", "n_embd", "d_model"),
                                              ("num_hidden_layers", "n_layer"),
                                              ("vocab_size",)))
    heads = config_int(hf, ("num_attention_heads", "n_head"))
    params = _params(hf, d, depth, vocab)
    if None in (d, depth, vocab, heads, params):
        return None
    tokens = cfg.optim.batch_size * cfg.data.context_length
    n_dict = n_dict_for(d, cfg.sae.dict_size_to_input_ratio)
    floats = params + 8 * d * n_dict  # model weights; SAE: weights, its gradient and Adam
    if cfg.loss.setting in ("e2e", "e2e_ds"):
        suffix = depth - cfg.layer
        floats += 5 * min(tokens, kl_chunk_tokens(torch.device("cuda"), vocab)) * vocab
        floats += tokens * suffix * (2 * heads * cfg.data.context_length + 18 * d)
    else:
        floats += 4 * tokens * d  # the activations at the hook, codes and reconstruction
        floats += tokens * n_dict * 2
    return OVERHEAD * 4 * floats / 2**30


def _params(hf: dict, d: int | None, depth: int | None, vocab: int | None) -> int | None:
    """Parameters: embeddings (untied unembedding counted twice) and 12 · d² per block (4 d²
    attention with grouped KV heads counted as full, 8 d² MLP at 4 d; a wider or gated MLP
    counts its own size)."""
    if None in (d, depth, vocab):
        return None
    mlp = config_int(hf, ("intermediate_size", "n_inner")) or 4 * d
    gated = 3 if "rms_norm_eps" in hf else 2  # Llama-family MLPs have gate, up and down
    tied = hf.get("tie_word_embeddings", True)
    return vocab * d * (1 if tied else 2) + depth * (4 * d * d + gated * d * mlp)
