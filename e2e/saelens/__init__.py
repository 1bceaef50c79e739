"""Every dictionary on disk in SAELens's layout: `cfg.json` + `sae_weights.safetensors`, the
`architecture` key picking the class that loads it (as SAELens does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from e2e.arch.jumprelu import JumpReLUSAE
from e2e.config import CellConfig
from e2e.dictionary import Dictionary
from e2e.io import atomic_path, atomic_write_text
from e2e.ksvd.dictionary import KSVDDictionary
from e2e.sae import SAE
from e2e.saelens.foreign import as_computed

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
KINDS: tuple[type[Dictionary], ...] = (SAE, JumpReLUSAE, KSVDDictionary)
ARCHITECTURES = {name: cls for cls in KINDS for name in cls.architectures}


def model_processing(name_or_path: str) -> dict[str, bool]:
    """The processing `e2e.model.load_model` applies (TransformerBridge's compatibility mode:
    TL's HookedTransformer.from_pretrained defaults), under SAELens's names: activations of a
    model loaded otherwise (raw HF weights: about twice the norm for GPT-2) are not what the
    SAE saw. RMSNorm models (Llama, Mistral, Gemma 2, Qwen) get no centring of the writing
    weights: their resid_pre is HF's hidden state (tests/test_split.py)."""
    from e2e.model import uses_rms_norm

    return {"fold_ln": True, "center_writing_weights": not uses_rms_norm(name_or_path),
            "center_unembed": True, "fold_value_biases": True}


def cell_meta(cfg: CellConfig, seed: int, exclude: tuple[int, ...] = ()) -> dict[str, Any]:
    """What a reader of a cell's dictionary needs to know about where it was trained: the
    model and its processing, the hook, the context (no BOS prepended: `prepend_bos`, written
    by `save_saelens`; the leading positions it never acted on: `skip_positions`, and as
    SAELens's `seqpos_slice`; the token ids whose positions it never acted on, `exclude`, in
    SAELens's `exclude_special_tokens`: their ids, or false; its norm rule,
    `exclude_norm_multiple`), the dataset."""
    model = cfg.source == "model"
    return {"model_name": cfg.model.name_or_path if model else "synthetic",
            "model_from_pretrained_kwargs": (model_processing(cfg.model.name_or_path)
                                             if model else {}),
            "hook_name": cfg.hook_name, "hook_layer": cfg.layer,
            "context_size": cfg.data.context_length, "dataset_path": cfg.data.dataset,
            "skip_positions": cfg.data.skip_positions if model else 0,
            # SAELens's own name for the positions a dictionary was trained on (its training
            # slices them; its HookedSAETransformer applies the SAE everywhere but at
            # `exclude_special_tokens`, so a row that starts with a BOS is where we trained)
            "seqpos_slice": [cfg.data.skip_positions if model else 0, None],
            "exclude_special_tokens": list(exclude) if model and exclude else False,
            "exclude_norm_multiple": cfg.data.exclude_norm_multiple if model else 0.0,
            "setting": cfg.loss.setting, "seed": seed}


def save_saelens(d: Dictionary, out_dir: Path, meta: dict[str, Any]) -> None:
    """Writes the weights, then cfg.json (the dictionary's own fields, then `meta`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(d.saelens_tensors(), str(tmp))
    # float32 weights on CPU; no input normalisation, no attention-head hook, no BOS added
    common = {"d_in": d.d_in, "d_sae": d.n_dict, "dtype": "float32", "device": "cpu",
              "normalize_activations": "none", "hook_head_index": None, "prepend_bos": False}
    cfg = {**common, **d.saelens_config(), **meta}
    atomic_write_text(out_dir / CFG_FILE, json.dumps(cfg, indent=2, sort_keys=True))


def load_saelens(sae_dir: Path | str) -> tuple[Dictionary, dict[str, Any]]:
    """The dictionary saved in `sae_dir` (ours, or any SAELens standard, topk or jumprelu SAE, its
    forward-changing fields honoured or refused: `e2e.saelens.foreign`) and its cfg.json as
    written; ValueError naming what cannot be loaded."""
    cfg = json.loads((Path(sae_dir) / CFG_FILE).read_text())
    arch = cfg.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{sae_dir}: architecture {arch!r} is not one of {sorted(ARCHITECTURES)}")
    try:
        tensors = load_file(str(Path(sae_dir) / WEIGHTS_FILE))
        run_cfg = cfg
        if issubclass(ARCHITECTURES[arch], SAE):
            run_cfg, tensors = as_computed(cfg, tensors)
        d = ARCHITECTURES[run_cfg["architecture"]].from_saelens(run_cfg, tensors)
    except ValueError as e:
        raise ValueError(f"{sae_dir}: {e}") from None
    return d, cfg
