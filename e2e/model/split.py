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

Skipped positions (`data.skip_positions`, docs/real-lm.md): the first `skip` positions of
every row keep their clean residual (the SAE is not applied there) and every tensor a
`CleanPass` or `patched_pass` hands out starts at position `skip`, so training, evaluation and
every metric see only the positions the SAE acts on. Excluded tokens (`data.exclude_tokens`,
`e2e.model.positions`) are the same rule at any position: given a `keep` mask, every
per-token tensor holds the kept tokens only, flattened to (n_kept, ...), and the patched pass
writes the SAE's output at those positions and the clean residual at the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.utils.checkpoint

from e2e.kernels import CleanTarget, unembed_logits
from e2e.model.positions import by_norm


class SplitForwardError(RuntimeError):
    """The split forward does not reproduce the model's own forward; the message says by how
    much (`verify_split`)."""


def resid_pre(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream entering block `layer`, (batch, pos, d_model); stops there."""
    return model(tokens, stop_at_layer=layer)


@dataclass
class CleanPass:
    """What the frozen model computes without an SAE, shared by every SAE at `layer`; every
    tensor from position `skip` on."""

    resid: torch.Tensor  # (batch, pos - skip, d_model) at blocks.layer.hook_resid_pre
    logits: torch.Tensor | None  # (batch, pos - skip, d_vocab); None unless asked for
    later_resids: list[torch.Tensor]  # resid_pre of blocks layer+1 .. n_layers-1
    target: CleanTarget | None  # the KL's clean side (training); None with the logits
    layer: int = 0
    # Per block from `layer` on: the arguments the model's own loop passed it after the
    # hidden states (positional, keyword); None when only the prefix ran.
    calls: list[tuple[tuple, dict]] | None = field(default=None, repr=False)
    skip: int = 0
    head: torch.Tensor | None = field(default=None, repr=False)  # resid at positions < skip
    # (resid, head) -> [final normalised residual, later resids]: `run_to_final` compiled for
    # this batch's shape (`e2e.model.traced`); None: the blocks run eagerly.
    suffix: Callable | None = field(default=None, repr=False)
    # With excluded tokens (`masked`): the kept positions (batch, pos - skip), and the clean
    # resid there (batch, pos - skip, d_model) that the SAE's output is written into; every
    # per-token tensor above is then (n_kept, ...).
    keep: torch.Tensor | None = field(default=None, repr=False)
    window: torch.Tensor | None = field(default=None, repr=False)
    kept_index: torch.Tensor | None = field(default=None, repr=False)  # keep's flat indices

    @property
    def window_tokens(self) -> int:
        """The positions the model runs on, kept or not (`resid`'s tokens without a mask)."""
        return self.resid.shape[:-1].numel() if self.keep is None else self.keep.numel()


def masked(clean: CleanPass, keep: torch.Tensor | None, norm_multiple: float = 0.0
           ) -> CleanPass:
    """`clean` reduced to the positions `keep` (batch, pos - skip) marks, less those whose
    residual is a `norm_multiple` outlier (`e2e.model.positions.by_norm`), each per-token
    tensor flattened to (n_kept, ...) in row-major order; `clean` itself when nothing is left
    out."""
    keep = by_norm(keep, clean.resid, norm_multiple)
    if keep is None:
        return clean
    # one nonzero per batch: every gather and scatter after it is an index_select/index_copy
    idx = keep.reshape(-1).nonzero().squeeze(1)
    target = clean.target
    if target is not None:
        target = replace(target, x=target.x.index_select(0, idx))
    return replace(clean, resid=_rows(clean.resid, idx), target=target, keep=keep,
                   window=clean.resid, kept_index=idx,
                   logits=None if clean.logits is None else _rows(clean.logits, idx),
                   later_resids=[_rows(r, idx) for r in clean.later_resids])


def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The positions `idx` (flat over batch and pos) of x (batch, pos, d): (len(idx), d)."""
    return x.reshape(-1, x.shape[-1]).index_select(0, idx)


class _Stop(Exception):  # noqa: N818 (control flow, not an error)
    """Raised by the hook on the unembedding: the clean pass of a training step ends there."""


def unembedding(model) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The frozen (weight (vocab, d_model), bias or None, logit soft cap or 0) that map the
    final normalised residual to logits; `verify_split` checks they are the model's own."""
    head = model.unembed.original_component
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    return head.weight, head.bias, max(cap, 0.0)


def unembed(model, x: torch.Tensor) -> torch.Tensor:
    """Logits (..., vocab) of the final normalised residual x (..., d_model)."""
    return unembed_logits(x, *unembedding(model))


@torch.no_grad()
def clean_pass(model, tokens: torch.Tensor, layer: int, full: bool, skip: int = 0,
               logits: bool = True, keep: torch.Tensor | None = None,
               norm_multiple: float = 0.0) -> CleanPass:
    """Runs the clean model; `full=False` stops after the prefix (local training).

    `full=True` is one forward of the whole model (no KV cache), recording each block's
    input and call arguments from `layer` on. With `logits=False` (a training step) it stops
    before the unembedding and keeps the KL's `target` instead of the logits. `skip`: leading
    positions left out; `keep`, `norm_multiple`: the kept positions after them (`masked`)."""
    return masked(_clean_pass(model, tokens, layer, full, skip, logits), keep, norm_multiple)


def _clean_pass(model, tokens: torch.Tensor, layer: int, full: bool, skip: int,
                logits: bool) -> CleanPass:
    if not full:
        r = resid_pre(model, tokens, layer)
        return CleanPass(r[:, skip:], None, [], None, layer, skip=skip, head=r[:, :skip])
    inputs: list[torch.Tensor] = []
    calls: list[tuple[tuple, dict]] = []
    final: list[torch.Tensor] = []

    def record(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        inputs.append(hidden)
        calls.append((args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}))

    def stop(_module, args):
        final.append(args[0])
        raise _Stop

    handles = [b.register_forward_pre_hook(record, with_kwargs=True)
               for b in model.blocks[layer:]]
    if not logits:
        handles.append(model.unembed.register_forward_pre_hook(stop))
    try:
        out = model(tokens, use_cache=False)
    except _Stop:
        out = None
    finally:
        for h in handles:
            h.remove()
    resid, later = inputs[0][:, skip:], [r[:, skip:] for r in inputs[1:]]
    head = inputs[0][:, :skip]
    if logits:
        return CleanPass(resid, out[:, skip:], later, None, layer, calls, skip, head)
    x = final[0][:, skip:]
    target = CleanTarget(x.reshape(-1, x.shape[-1]), *unembedding(model))
    return CleanPass(resid, None, later, target, layer, calls, skip, head)


def run_to_final(model, resid: torch.Tensor, clean: CleanPass, checkpoint: bool = False
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Blocks `clean.layer`.. on `resid` (positions `clean.skip`.., after the clean ones
    before them) with the calls recorded by `clean`, then the final norm; returns the final
    normalised residual (batch, pos - skip, d_model) and the resid_pre of every later block,
    from position `skip` on. `checkpoint`: eagerly, each block recomputed in the backward
    instead of keeping its activations (`run_blocks`). With `clean.keep`, `resid` is
    (n_kept, d_model), written at the kept positions of the clean residual, and both results
    are the kept positions' (n_kept, d_model)."""
    if clean.keep is not None:  # out of place: the gradient reaches `resid` only
        w = clean.window.to(resid.dtype)
        resid = w.reshape(-1, w.shape[-1]).index_copy(0, clean.kept_index, resid).view(w.shape)
    if clean.suffix is not None and not checkpoint:  # these blocks' graph (`e2e.model.traced`)
        final, *later = clean.suffix(resid, clean.head)
    else:
        h = torch.cat([clean.head.to(resid.dtype), resid], 1) if clean.skip else resid
        inputs = run_blocks(model, h, clean.layer, clean.calls, checkpoint)
        final = model.ln_final(inputs[-1])[:, clean.skip:]
        later = [r[:, clean.skip:] for r in inputs[1:-1]]
    if clean.keep is not None:
        return _rows(final, clean.kept_index), [_rows(r, clean.kept_index) for r in later]
    return final, later


def run_blocks(model, h: torch.Tensor, first: int, calls: list[tuple[tuple, dict]],
               checkpoint: bool = False) -> list[torch.Tensor]:
    """Blocks `first`, `first + 1`, .. (one per entry of `calls`, each with its recorded
    arguments) on the residual h (batch, pos, d_model); returns every block's input, then the
    last block's output. `checkpoint`: each block keeps only its input for the backward and
    runs again there (`torch.utils.checkpoint`: the same values, a block's activations
    instead of all of them; the GPT-2 shape's six-block suffix keeps 7 GiB at batch 4)."""
    inputs = [h]
    for block, (args, kwargs) in zip(model.blocks[first:first + len(calls)], calls, strict=True):
        out = (torch.utils.checkpoint.checkpoint(block, inputs[-1], *args, use_reentrant=False,
                                                 **kwargs)
               if checkpoint else block(inputs[-1], *args, **kwargs))
        inputs.append(out[0] if isinstance(out, tuple) else out)
    return inputs


def run_from(model, resid: torch.Tensor, clean: CleanPass) -> tuple[torch.Tensor,
                                                                    list[torch.Tensor]]:
    """`run_to_final`, then the unembedding: the logits (batch, pos - skip, d_vocab) and the
    resid_pre of every later block."""
    final, later = run_to_final(model, resid, clean)
    return unembed(model, final), later


def patched_pass(model, clean: CleanPass, sae_out: torch.Tensor
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The model with `sae_out` replacing resid_pre at `clean.layer`; gradients reach the SAE
    only. Returns the logits and the resid_pre of every later block; for a training step's
    clean pass (which holds a KL `target`), the final normalised residual instead of the
    logits, which the KL unembeds itself (`e2e.losses.kl_orig_sae`)."""
    return (run_to_final if clean.target is not None else run_from)(model, sae_out, clean)


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
