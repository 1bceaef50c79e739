"""The split forward: the clean prefix once, the suffix on an SAE's output.

`clean_pass` runs the model once, as the model's own forward (Hugging Face's layer loop,
through TransformerLens 4's bridge), and records what that loop passed to each block from
`layer` on: rotary `position_embeddings`, position ids, the causal mask (per layer: Gemma 2
alternates sliding-window and global ones), which differ by architecture and which the blocks
called alone would lack. `patched_pass` then runs only blocks >= layer on the SAE output with
exactly those arguments, then the final norm, the unembedding and the logit soft-cap (Gemma 2),
so the prefix is computed once for any number of SAEs at `layer` and the suffix equals the full
model with the residual written at `blocks.L.hook_resid_pre` by a hook (tests/test_split.py,
every architecture in `VERIFIED_ARCHITECTURES`). `verify_split` checks that equality on a
cell's first batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from e2e.losses import CleanTarget, clean_target


class SplitForwardError(RuntimeError):
    """The split forward does not reproduce the model's own forward; the message says by how
    much (`verify_split`)."""


def resid_pre(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream entering block `layer`, (batch, pos, d_model); stops there."""
    return model(tokens, stop_at_layer=layer)


@dataclass
class CleanPass:
    """What the frozen model computes without an SAE, shared by every SAE at `layer`."""

    resid: torch.Tensor  # (batch, pos, d_model) at blocks.layer.hook_resid_pre
    logits: torch.Tensor | None  # (batch, pos, d_vocab), None when only the prefix ran
    later_resids: list[torch.Tensor]  # resid_pre of blocks layer+1 .. n_layers-1
    target: CleanTarget | None  # softmax of `logits` for the KL, None with the logits
    layer: int = 0
    # Per block from `layer` on: the arguments the model's own loop passed it after the
    # hidden states (positional, keyword); None when only the prefix ran.
    calls: list[tuple[tuple, dict]] | None = field(default=None, repr=False)


@torch.no_grad()
def clean_pass(model, tokens: torch.Tensor, layer: int, full: bool) -> CleanPass:
    """Runs the clean model; `full=False` stops after the prefix (local training).

    `full=True` is one forward of the whole model (no KV cache), recording each block's
    input and call arguments from `layer` on."""
    if not full:
        return CleanPass(resid_pre(model, tokens, layer), None, [], None, layer)
    inputs: list[torch.Tensor] = []
    calls: list[tuple[tuple, dict]] = []

    def record(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        inputs.append(hidden)
        calls.append((args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}))

    handles = [b.register_forward_pre_hook(record, with_kwargs=True)
               for b in model.blocks[layer:]]
    try:
        logits = model(tokens, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return CleanPass(inputs[0], logits, inputs[1:], clean_target(logits), layer, calls)


def run_from(model, resid: torch.Tensor, clean: CleanPass) -> tuple[torch.Tensor,
                                                                    list[torch.Tensor]]:
    """Blocks `clean.layer`.. on `resid` with the calls recorded by `clean`; returns the
    logits (batch, pos, d_vocab) and the resid_pre of every later block."""
    later: list[torch.Tensor] = []
    h = resid
    for i, (block, (args, kwargs)) in enumerate(zip(model.blocks[clean.layer:], clean.calls,
                                                     strict=True)):
        if i > 0:
            later.append(h)
        out = block(h, *args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
    logits = model.unembed(model.ln_final(h))
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    if cap > 0:  # Gemma 2's final soft-cap, which HF's LM head applies after the unembedding
        logits = cap * torch.tanh(logits / cap)
    return logits, later


def patched_pass(model, clean: CleanPass, sae_out: torch.Tensor
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The model with `sae_out` replacing resid_pre at `clean.layer`; gradients reach the SAE
    only. Returns the logits and the resid_pre of every later block."""
    return run_from(model, sae_out, clean)


@torch.no_grad()
def verify_split(model, tokens: torch.Tensor, layer: int, rtol: float = 1e-4) -> float:
    """Max |split - full| logit difference on `tokens`, the suffix run on the clean residual;
    SplitForwardError when it exceeds `rtol` times the logits' scale (a cell's first batch)."""
    clean = clean_pass(model, tokens, layer, full=True)
    split, _ = run_from(model, clean.resid, clean)
    diff = float((split.float() - clean.logits.float()).abs().max())
    scale = float(clean.logits.float().abs().max())
    if not diff <= rtol * max(scale, 1.0):
        raise SplitForwardError(
            f"the split forward at layer {layer} differs from the model's own by {diff:.3g} "
            f"(logit scale {scale:.3g}); the architecture's layer loop passes its blocks "
            "something this project does not replay")
    return diff
