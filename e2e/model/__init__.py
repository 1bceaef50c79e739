"""Loading the frozen TransformerLens model, and running it around an SAE at `hook_resid_pre`
(the split forward: `e2e.model.split`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from e2e.config import CellConfig, ConfigError, ModelConfig
from e2e.model.positions import Positions, positions_for
from e2e.model.split import (
    CleanPass,
    SplitForwardError,
    clean_pass,
    masked,
    patched_pass,
    resid_pre,
    run_from,
    run_to_final,
    unembed,
    unembedding,
    verify_split,
)
from e2e.model.traced import Traced, traced_for

__all__ = ["VERIFIED_ARCHITECTURES", "CleanPass", "ModelUnavailableError", "SplitForwardError",
           "Positions", "check_architecture", "clean_pass", "load_model", "masked",
           "patched_pass", "positions_for",
           "passes_compiled", "resid_pre", "resolve_device", "run_from",
           "run_to_final", "Traced", "traced_for", "unembed", "unembedding",
           "uses_rms_norm", "verify_split"]

# Hugging Face architectures whose split forward equals the hooked full forward, tested on
# random tiny configs (and SmolLM2-135M for Llama) in tests/test_split.py.
VERIFIED_ARCHITECTURES = ("GPT2LMHeadModel", "GPTNeoXForCausalLM", "LlamaForCausalLM",
                          "MistralForCausalLM", "Gemma2ForCausalLM", "Qwen2ForCausalLM",
                          "Qwen3ForCausalLM")


class ModelUnavailableError(ConfigError):
    """The model can be neither found locally nor fetched; raised before any work starts (bad
    input: one line for the user, `jobs.cli.run`)."""


def check_architecture(architectures: list[str] | None, name: str) -> None:
    """ConfigError unless the model's HF `architectures` (from its config.json) is verified."""
    arch = (architectures or ["<none>"])[0]
    if arch not in VERIFIED_ARCHITECTURES:
        raise ConfigError(
            f"model {name!r} is a {arch}, whose split forward this project has not verified "
            f"against its full forward; verified: {', '.join(VERIFIED_ARCHITECTURES)}")


def uses_rms_norm(name_or_path: str) -> bool:
    """Whether the model normalises with RMSNorm (its HF config has `rms_norm_eps`: Llama,
    Mistral, Gemma 2, Qwen) rather than LayerNorm (GPT-2, GPT-NeoX); the config is read from
    the folder or the local HF cache (a cell's model always is there: it was loaded; a name
    not there reads as LayerNorm, the paper's GPT-2)."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(name_or_path, local_files_only=True)
    except OSError:
        return False
    return hasattr(cfg, "rms_norm_eps")


def load_model(cfg: ModelConfig, device: str | torch.device = "cpu"):
    """Boots the model as TransformerLens-processed weights (fold_ln, centering), frozen.

    The paper's SAEs (and λ values) live in HookedTransformer's processed coordinates;
    `enable_compatibility_mode()` gives bit-identical resid_pre to TL 3.9's defaults (for
    RMSNorm models it folds the norm weights and centres nothing: resid_pre is HF's hidden
    state). Raises ConfigError for an architecture not in `VERIFIED_ARCHITECTURES`.
    """
    from transformer_lens.model_bridge import TransformerBridge

    name = cfg.name_or_path
    if Path(name).is_absolute() and not (Path(name) / "config.json").is_file():
        raise ModelUnavailableError(f"model directory {name} does not exist" if not Path(
            name).is_dir() else f"model directory {name} has no config.json")
    try:
        model = TransformerBridge.boot_transformers(name, device=str(device))
    except OSError as e:  # transformers raises OSError for unknown names / offline misses
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: is it in the HF cache?)" if offline else ""
        raise ModelUnavailableError(f"cannot load model {name!r}{hint}: {e}") from e
    check_architecture(getattr(model.original_model.config, "architectures", None), name)
    model.enable_compatibility_mode()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _one_kernel_gelu(model)
    _keep_no_pattern(model)
    return model


def _keep_no_pattern(model) -> None:
    """TransformerLens's attention keeps its last pattern as `_pattern`, which nothing reads:
    each layer's (batch, heads, pos, pos) probabilities, 2.3 GiB for GPT-2 small at 4 x 1,024
    after an eval, and under grad the graph they hang on, held until the layer's next call.
    A hook drops it after each call."""
    for module in model.modules():
        if hasattr(module, "_pattern"):
            module.register_forward_hook(_drop_pattern)


def _drop_pattern(module, _args, _output) -> None:
    module._pattern = None


def _one_kernel_gelu(model) -> None:
    """GPT-2's gelu_new (HF's NewGELUActivation: the tanh approximation written as seven
    tensor operations) replaced by HF's GELUTanh, the same formula as PyTorch's one kernel,
    forward and backward; HF calls them equivalent up to rounding (6e-7 of logits of scale 2 in
    fp32, tests/test_model.py). A GPT-2 block's forward: 20% faster in fp32, 9% in bf16 on 2
    CPU cores (docs/performance.md)."""
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())


def resolve_device(name: str) -> torch.device:
    """The cell's device; on CUDA, TF32 for the fp32 matmuls that remain (autocast or not)."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if name == "auto" else name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device


def passes_compiled(cfg: CellConfig) -> bool:
    """Whether the cell's training steps run the frozen blocks as compiled graphs
    (`e2e.model.traced`): `model.compile`, auto meaning a cell of at least 2**24 training
    tokens (compiling takes seconds a block; the paper's cells train on 409.6M tokens)."""
    if cfg.model.compile != "auto":
        return cfg.model.compile == "on"
    return cfg.optim.n_samples * cfg.data.context_length >= 2**24
