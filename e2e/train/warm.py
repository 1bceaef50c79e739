"""Warm start: a cell that begins from a finished dictionary (`init.from_cell`, `init.from_path`).

The parent is a finished cell of the same grid (a sibling folder with DONE) or any SAELens
folder of ours or SAELens's standard/topk layout. It must match the child in hook, width and
activation; `parent_mismatch` names every field that differs, and the plan calls it before
anything is submitted. A parent cell's raw weights come from its final `checkpoint.pt` (bit for
bit the SAE its final evaluation scored, so the child's step-0 evaluation equals it exactly);
a SAELens folder gives its saved tensors. The sha256 of the parent's `sae_weights.safetensors`
identifies it: recorded by the child at its start, and checked on every resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from e2e.arch.config import SAVED_AS
from e2e.config import CellConfig, ConfigError, n_dict_for
from e2e.io import cell_paths, load_checkpoint, read_cell_config
from e2e.saelens import CFG_FILE, WEIGHTS_FILE, load_saelens, model_processing
from e2e.saelens.foreign import flat_fields


def parent_dir(cfg: CellConfig, grid_dir: Path | str) -> Path:
    """The parent's folder: a sibling cell's `sae/`-holding folder, or the SAELens folder."""
    return Path(grid_dir) / cfg.init.from_cell if cfg.init.from_cell else Path(cfg.init.from_path)


def _weights(cfg: CellConfig, parent: Path) -> Path:
    return (cell_paths(parent).sae if cfg.init.from_cell else parent) / WEIGHTS_FILE


def weights_sha256(cfg: CellConfig, parent: Path) -> str:
    """sha256 of the parent's published weights file."""
    h = hashlib.sha256()
    with open(_weights(cfg, parent), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parent_mismatch(cfg: CellConfig, parent: Path, d_in: int | None = None) -> str | None:
    """Why `parent` cannot start `cfg` (missing, not finished, another hook, width, activation
    or k), naming each field that differs; None when it can. `d_in`: the hook's width, where
    known (a parent cell's config gives it relative to the same model)."""
    what = f"init.from_cell={cfg.init.from_cell}" if cfg.init.from_cell else (
        f"init.from_path={cfg.init.from_path}")
    if cfg.init.from_cell:
        paths = cell_paths(parent)
        if not paths.config.exists():
            return f"{what}: no such cell in this grid ({parent})"
        if not paths.done.exists():
            return f"{what}: the parent is not finished (no {paths.done})"
        p = read_cell_config(parent)
        mine = _shape_fields(cfg)
        diff = [f"{k}: parent {v!r}, child {mine[k]!r}" for k, v in _shape_fields(p).items()
                if mine[k] != v]
        return f"{what} differs from the child in {'; '.join(diff)}" if diff else None
    if not (parent / CFG_FILE).exists() or not (parent / WEIGHTS_FILE).exists():
        return f"{what}: not a SAELens folder (needs {CFG_FILE} and {WEIGHTS_FILE})"
    try:
        meta: dict[str, Any] = flat_fields(json.loads((parent / CFG_FILE).read_text()))
    except json.JSONDecodeError as e:
        return f"{what}: {CFG_FILE} is not JSON ({e})"
    if SAVED_AS[cfg.sae.activation] == "jumprelu" != cfg.sae.activation:
        return (f"{what}: a saved sae.activation={cfg.sae.activation} is a JumpReLU SAE (its "
                "batch top-k state is not saved); start it from a cell (init.from_cell)")
    want = {"hook_name": cfg.hook_name, "architecture": SAVED_AS[cfg.sae.activation],
            "k": cfg.sae.k if cfg.sae.activation == "topk" else None}
    if d_in is not None:
        want.update(d_in=d_in, d_sae=n_dict_for(d_in, cfg.sae.dict_size_to_input_ratio))
    have = {k: meta.get(k, "standard" if k == "architecture" else None) for k in want}
    diff = [f"{k}: parent {have[k]!r}, child {want[k]!r}" for k in want if have[k] != want[k]]
    diff += _context_diff(cfg, meta)
    if cfg.mfr.n_saes > 1:
        diff.append(f"mfr.n_saes: parent 1, child {cfg.mfr.n_saes}")
    if diff:
        return f"{what} differs from the child in {'; '.join(diff)}"
    try:  # every check the cell makes when it loads the folder, made here too
        load_saelens(parent)
    except ValueError as e:
        return f"{what}: {e}"
    return None


def _context_diff(cfg: CellConfig, meta: dict[str, Any]) -> list[str]:
    """What makes a folder's inputs other than the child's: another model, or another
    processing of it (SAELens's `model_from_pretrained_kwargs`; absent: TransformerLens's
    defaults, which are ours)."""
    out = []
    if cfg.source == "model" and meta.get("model_name") is not None and not _same_model(
            meta["model_name"], cfg.model.name_or_path, cfg.init.from_path):
        out.append(f"model_name: parent {meta['model_name']!r}, child "
                   f"{cfg.model.name_or_path!r}")
    kwargs = meta.get("model_from_pretrained_kwargs") or {}
    mine = model_processing(cfg.model.name_or_path) if cfg.source == "model" and kwargs else {}
    out += [f"model_from_pretrained_kwargs.{k}: parent {kwargs[k]!r}, child {v!r}"
            for k, v in mine.items() if k in kwargs and kwargs[k] != v]
    return out


def _same_model(theirs: str, mine: str, folder: str) -> bool:
    """The same model: one official name, or (the shared root moved since the parent's
    cfg.json was written) a path that is gone and ends in the child's model path relative to
    the folder's and the model's common ancestor (the root: `<grid>/_pretrain-<hash>/model`,
    `models/tiny`)."""
    if _official(theirs) == _official(mine):
        return True
    if not (Path(theirs).is_absolute() and Path(mine).is_absolute() and folder) or Path(
            theirs).exists():
        return False
    common = os.path.commonpath([os.path.abspath(folder), mine])
    return common != os.sep and theirs.endswith(os.sep + os.path.relpath(mine, common))


def _official(name: str) -> str:
    """The model a name stands for: a stage's model folder (`jobs/stage.py`) is the model it
    copied (its manifest), a TransformerLens alias its official name (gpt2-small -> gpt2)."""
    from transformer_lens.supported_models import get_official_model_name

    from e2e.data.staged import MANIFEST

    manifest = Path(name).parent / MANIFEST
    if Path(name).is_dir() and manifest.exists():
        name = json.loads(manifest.read_text())["sources"]["model"]

    try:
        return get_official_model_name(name)
    except ValueError:
        return name


def parent_notes(cfg: CellConfig) -> list[str]:
    """What only differs in data between a folder parent and its child: its context size, a
    BOS it prepended (the child trains on neither): one line each, for the plan."""
    if not cfg.init.from_path:
        return []
    try:
        meta = flat_fields(json.loads((Path(cfg.init.from_path) / CFG_FILE).read_text()))
    except (OSError, json.JSONDecodeError):
        return []
    out = []
    if meta.get("context_size") not in (None, cfg.data.context_length):
        out.append(f"init.from_path={cfg.init.from_path} was trained on contexts of "
                   f"{meta['context_size']} tokens; its child on {cfg.data.context_length}")
    if meta.get("prepend_bos"):
        out.append(f"init.from_path={cfg.init.from_path} was trained with a BOS token "
                   "prepended (prepend_bos); its child's rows have none")
    theirs = meta.get("exclude_special_tokens") or False
    mine = cfg.data.exclude_tokens or False
    if bool(theirs) != bool(mine):
        left = f"the positions of tokens {theirs}" if theirs else "no token's positions"
        out.append(f"init.from_path={cfg.init.from_path} left out {left} "
                   f"(exclude_special_tokens); its child: data.exclude_tokens={mine or 'none'}")
    return out


def _shape_fields(cfg: CellConfig) -> dict[str, Any]:
    """What a parent cell shares with its child: the model, the hook, the dictionary's shape."""
    return {"kind": cfg.kind, "model.name_or_path": cfg.model.name_or_path, "source": cfg.source,
            "hook": cfg.hook_name, "sae.dict_size_to_input_ratio":
            cfg.sae.dict_size_to_input_ratio, "sae.activation": cfg.sae.activation,
            "sae.k": cfg.sae.k, "mfr.n_saes": cfg.mfr.n_saes}


def parent_states(cfg: CellConfig, grid_dir: Path | str, d_in: int, device: torch.device
                  ) -> tuple[list[dict[str, torch.Tensor]], str, dict | None, list | None]:
    """The state dict of each of the child's SAEs (its parent's, in order), the parent's
    sha256, where the parent's data stream ended (a parent cell; None for a folder), so the
    child goes on with fresh samples, and the parent's alive trackers (a cell; None for a
    folder), so the child's first alive count is its parent's. ConfigError when the parent
    cannot start this child, or changed since the submission that recorded `init.sha256`."""
    parent = parent_dir(cfg, grid_dir)
    why = parent_mismatch(cfg, parent, d_in)
    if why:
        raise ConfigError(why)
    sha = weights_sha256(cfg, parent)
    if cfg.init.sha256 and sha != cfg.init.sha256:
        raise ConfigError(f"{parent}: its weights changed since submission (sha256 {sha[:12]}, "
                          f"config {cfg.init.sha256[:12]}); resubmit to start from them")
    if cfg.init.from_cell:
        ckpt = load_checkpoint(cell_paths(parent).checkpoint, device)
        return ckpt["saes"], sha, ckpt["data"], ckpt.get("alive")
    sae, _ = load_saelens(parent)
    return [{k: v.to(device) for k, v in sae.state_dict().items()}], sha, None, None
