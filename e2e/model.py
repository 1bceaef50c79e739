"""Loading the frozen TransformerLens model and running it around an SAE at `hook_resid_pre`.

The clean prefix (blocks < L) is computed once and shared: `clean_pass` runs it (without grad)
and, when needed, the clean suffix; `patched_pass` runs only blocks >= L on the SAE output. Any
number of SAEs at layer L can reuse one `CleanPass`.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from e2e.config import CellConfig, ModelConfig
from e2e.losses import CleanTarget, clean_target


class ModelUnavailableError(RuntimeError):
    """The model can be neither found locally nor fetched; raised before any work starts."""


def load_model(cfg: ModelConfig, device: str | torch.device = "cpu"):
    """Boots the model as TransformerLens-processed weights (fold_ln, centering), frozen.

    The paper's SAEs (and λ values) live in HookedTransformer's processed coordinates;
    `enable_compatibility_mode()` gives bit-identical resid_pre to TL 3.9's defaults.
    """
    from transformer_lens.model_bridge import TransformerBridge

    name = cfg.name_or_path
    if not Path(name).is_dir() and Path(name).is_absolute():
        raise ModelUnavailableError(f"model directory {name} does not exist")
    try:
        model = TransformerBridge.boot_transformers(name, device=str(device))
    except OSError as e:  # transformers raises OSError for unknown names / offline misses
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: is it in the HF cache?)" if offline else ""
        raise ModelUnavailableError(f"cannot load model {name!r}{hint}: {e}") from e
    model.enable_compatibility_mode()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def resid_pre(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream entering block `layer`, (batch, pos, d_model); stops there."""
    return model(tokens, stop_at_layer=layer)


def run_from(model, resid: torch.Tensor, layer: int, keep_resids: bool
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Runs blocks layer.. on `resid`; returns logits and, if asked, resid_pre of blocks > layer.

    Calling the blocks directly (not `forward(start_at_layer=)`, which re-runs the prefix and
    discards it) is what keeps the prefix computed once.
    """
    later: list[torch.Tensor] = []
    h = resid
    for i, block in enumerate(model.blocks[layer:]):
        if keep_resids and i > 0:
            later.append(h)
        out = block(h)
        h = out[0] if isinstance(out, tuple) else out
    return model.unembed(model.ln_final(h)), later


@dataclass
class CleanPass:
    """What the frozen model computes without an SAE, shared by every SAE at `layer`."""

    resid: torch.Tensor  # (batch, pos, d_model) at blocks.layer.hook_resid_pre
    logits: torch.Tensor | None  # (batch, pos, d_vocab), None when only the prefix ran
    later_resids: list[torch.Tensor]  # resid_pre of blocks layer+1 .. n_layers-1
    target: CleanTarget | None  # softmax of `logits` for the KL, None with the logits


@torch.no_grad()
def clean_pass(model, tokens: torch.Tensor, layer: int, full: bool) -> CleanPass:
    """Runs the clean model; `full=False` stops after the prefix (local training)."""
    resid = resid_pre(model, tokens, layer)
    if not full:
        return CleanPass(resid, None, [], None)
    logits, later = run_from(model, resid, layer, keep_resids=True)
    return CleanPass(resid, logits, later, clean_target(logits))


def patched_pass(model, sae_out: torch.Tensor, layer: int
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The model with `sae_out` replacing resid_pre at `layer`; gradients reach the SAE only."""
    return run_from(model, sae_out, layer, keep_resids=True)


def resolve_device(name: str) -> torch.device:
    """The cell's device; on CUDA, TF32 for the fp32 matmuls that remain (autocast or not)."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if name == "auto" else name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device


def autocast_for(cfg: CellConfig, device: torch.device):
    """bf16 autocast (fp32 weights) when the cell asks for it, else nothing."""
    return (torch.autocast(device.type, dtype=torch.bfloat16)
            if cfg.dtype == "bfloat16" else nullcontext())
