"""SAELens folders written by SAELens or other tools, read as they compute.

SAELens's config has fields that change what a `standard`, `topk` or `jumprelu` SAE computes,
and the
files of other tools set them. Each is honoured exactly, by folding it into the weights, or
refused with a message naming it; nothing is ignored (issue 20, item 3). Checked against
SAELens's own forward to 1e-5 (tests/test_saelens.py).

- `apply_b_dec_to_input` (SAELens's default: true): the encoder sees x − b_dec. Folded:
  (x − b_dec) W_enc + b_enc = x W_enc + (b_enc − b_dec W_enc).
- `W_dec` rows of any norm n_i > 0 (SAELens decodes with W_dec as stored; our SAE with unit
  rows). ReLU: relu(p_i) W_dec_i = relu(n_i p_i) (W_dec_i / n_i), so W_enc's column i and
  b_enc_i are scaled by n_i (SAELens's `fold_W_dec_norm`; the codes come out in units of the
  unit-norm elements). TopK with `rescale_acts_by_decoder_norm: true` picks the top k of n_i p_i
  and decodes with W_dec_i / n_i: the same fold. TopK without it picks the top k of p_i before
  the norms: no fold keeps that choice; refused.
- `activation_fn` / `activation_fn_str` (before SAELens 6): "relu", or "topk" with
  `activation_fn_kwargs: {"k": k}` (then a topk SAE, as SAELens converts it); anything else is
  refused (SAELens 6 would run a standard SAE as ReLU whatever the field said).
- Refused: `normalize_activations` other than "none" (the scaling factor or statistics are not
  in the folder; SAELens itself applies "expected_average_only_in" only when its registry knows
  the factor), `reshape_activations` "hook_z" and a `hook_head_index` (attention heads),
  `finetuning_scaling_factor` and a `scaling_factor` tensor other than ones, W_dec rows of norm
  zero.
"""

from __future__ import annotations

from typing import Any

import torch

NORM_TOLERANCE = 1e-5  # rows within this of unit norm are taken as they are (our own files)


def flat_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """A cfg.json's fields in one dict: SAELens 6 keeps the hook, model and dataset under
    `metadata`; a topk SAE written before SAELens 6 is `standard` with `activation_fn(_str)`
    "topk" and `activation_fn_kwargs.k` (read as SAELens reads it: architecture topk, k)."""
    out = {"architecture": "standard", **(cfg.get("metadata") or {}), **cfg}
    for old, new in (("hook_point", "hook_name"), ("hook_point_layer", "hook_layer")):
        if old in out and new not in out:  # before SAELens 6 (it renames them on loading)
            out[new] = out[old]
    if out.get("activation_fn", out.get("activation_fn_str")) == "topk":
        # SAELens converts only with activation_fn_kwargs.k (a top-level k: it runs ReLU)
        out.update(architecture="topk", k=(out.get("activation_fn_kwargs") or {}).get("k"))
    return out


def as_computed(cfg: dict[str, Any], tensors: dict[str, torch.Tensor]
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """cfg.json and weights of a SAELens standard, topk or jumprelu SAE, rewritten in the form
    `e2e.sae.SAE` (`e2e.arch.jumprelu.JumpReLUSAE`) computes: codes relu / topk-then-relu /
    jumprelu of x W_enc + b_enc, reconstruction codes @ W_dec (unit rows) + b_dec. ValueError
    naming the first field that cannot be honoured."""
    act = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    if act not in ("relu", "topk"):
        raise ValueError(f"activation_fn {act!r} is not supported (relu, or topk with "
                         "activation_fn_kwargs.k)")
    cfg = flat_fields(cfg)  # SAELens 6's metadata (a head index) is checked too
    if act == "topk" and cfg["k"] is None:
        raise ValueError("activation_fn 'topk' without activation_fn_kwargs.k")
    _check_shapes(cfg, tensors)
    _refuse_unfoldable(cfg, tensors)
    w_enc, b_enc = tensors["W_enc"].float(), tensors["b_enc"].float()
    w_dec, b_dec = tensors["W_dec"].float(), tensors["b_dec"].float()
    if cfg.get("apply_b_dec_to_input", True):
        b_enc = b_enc - b_dec @ w_enc
    norms = torch.linalg.vector_norm(w_dec, dim=1)
    if bool((norms == 0).any()):
        raise ValueError(f"W_dec has {int((norms == 0).sum())} rows of norm zero")
    if float((norms - 1).abs().max()) > NORM_TOLERANCE:
        if cfg.get("architecture") == "topk" and not cfg.get("rescale_acts_by_decoder_norm"):
            raise ValueError(
                f"W_dec rows are not unit norm (norms {float(norms.min()):.3g}-"
                f"{float(norms.max()):.3g}) in a topk SAE with rescale_acts_by_decoder_norm "
                "false: SAELens picks the top k before the norms, this SAE after them")
        w_enc, b_enc, w_dec = w_enc * norms, b_enc * norms, w_dec / norms[:, None]
        if "threshold" in tensors:
            tensors = {**tensors, "threshold": tensors["threshold"].float() * norms}
    cfg.update(apply_b_dec_to_input=False, rescale_acts_by_decoder_norm=False)
    out = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
    if cfg["architecture"] == "jumprelu":
        out["threshold"] = tensors["threshold"].float()
    return cfg, out


def _check_shapes(cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor the architecture reads, of its shape; every tensor in the folder read by
    it (a JumpReLU `threshold` beside a cfg.json with no `architecture` was dropped, and the
    SAE ran as ReLU)."""
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
            **({"threshold": (d_sae,)} if cfg["architecture"] == "jumprelu" else {})}
    unused = sorted(set(tensors) - set(want) - {"scaling_factor"})  # checked: all ones
    if unused:
        hint = (" (a JumpReLU SAE's: set \"architecture\": \"jumprelu\" in cfg.json)"
                if "threshold" in unused else "")
        raise ValueError(f"the weights hold {unused[0]!r}, which a {cfg['architecture']!r} SAE "
                         f"does not use{hint}")
    for name, shape in want.items():
        if name not in tensors:
            raise ValueError(f"the weights have no {name}")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensors[name].shape)}, but d_in {d_in} "
                             f"and d_sae {d_sae} make it {shape}")
    k = cfg.get("k")
    if cfg["architecture"] == "topk" and not (isinstance(k, int) and 1 <= k <= d_sae):
        raise ValueError(f"k {k!r} of a topk SAE must be an integer in [1, d_sae={d_sae}]")


def _refuse_unfoldable(cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None, False):
        raise ValueError(f"normalize_activations {norm!r} is not supported: the input scaling "
                         "is not in the folder (fold it into the weights, then 'none')")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(f"reshape_activations {cfg['reshape_activations']!r} is not supported "
                         "(attention-head SAEs)")
    for head in ("hook_head_index", "hook_point_head_index"):
        if cfg.get(head) is not None:
            raise ValueError(f"{head} {cfg[head]!r} is not supported (attention-head SAEs)")
    if cfg.get("finetuning_scaling_factor"):
        raise ValueError("finetuning_scaling_factor true is not supported")
    scale = tensors.get("scaling_factor")
    if scale is not None and not bool((scale == 1).all()):
        raise ValueError("a scaling_factor tensor other than ones is not supported")
