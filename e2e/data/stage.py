"""Staging: a grid's model and the exact token rows its cells read, copied once to shared storage.

Compute nodes often have no internet. `stage(cfg, n_train_rows, n_eval_rows, out_dir)` saves,
from a machine that reaches the sources (a login node):
  model/      the model in the Hugging Face layout with its tokenizer (the bridge boots it
              from the path);
  rows/       the train rows the cells will read, then the eval rows, in the order a cell
              would stream them (the same TokenStream, seed and shuffle), as int32 `.npy`
              shards of (rows, context_length), memory-mapped when read: the paper's 409.6M
              tokens need not fit in a node's RAM;
  manifest.json  sources (ids, revisions), row counts, and the sha256 and size of every file;
  DONE        written last.
Each shard is written atomically and the stage resumes after an interruption: the source
stream is replayed from its start and the rows already saved are skipped, so a resumed stage
holds exactly the rows of an uninterrupted one (an HF stream's saved state restarts its shuffle
buffer empty, which would not). A stage without DONE, or whose files do not match the manifest,
is refused with `e2e.data.staged.StageError`, never read (the reader lives there).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2e.config import CellConfig, ModelConfig
from e2e.data.staged import MANIFEST, ROWS_FILE, sha256, verify
from e2e.data.tokenizer_id import rows_record, tokenizer_record, write_record
from e2e.data.tokens import TokenStream, eval_stream
from e2e.io import atomic_path, atomic_write_text

SHARD_ROWS = 8192  # 32 MiB shards at the paper's 1,024-token rows


def stage_key(cfg: CellConfig, n_train_rows: int, n_eval_rows: int) -> str:
    """What a stage's content depends on: model, data source and order, and the row counts."""
    d = {"model": cfg.model.name_or_path, "data": vars(cfg.data), "seed": cfg.seed,
         "n_train_rows": n_train_rows, "n_eval_rows": n_eval_rows}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def rows_needed(cfg: CellConfig) -> tuple[int, int]:
    """Train and eval rows one cell reads: every optimizer step's samples, every eval batch
    (the eval stream also feeds the post-training alive pass, from its start)."""
    n_train = cfg.optim.n_steps * cfg.optim.samples_per_step
    n_eval = max(cfg.eval.n_batches, cfg.alive_pass_batches) * cfg.eval.batch_size
    return n_train, n_eval


def staged_config(cfg: CellConfig, stage_dir: Path) -> CellConfig:
    """The cell reading the stage: its model folder and its rows, in order, no hub access."""
    data = replace(cfg.data, dataset=str(Path(stage_dir) / "rows"), split="train",
                   column="input_ids", eval_split="eval")
    return replace(cfg, model=ModelConfig(str(Path(stage_dir) / "model")), data=data)


def _revision(name: str, kind: str) -> str:
    """The hub commit of a source, "local" for a folder, "unknown" when the hub is not asked."""
    if Path(name).exists():
        return "local"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "unknown (offline)"
    try:
        from huggingface_hub import HfApi

        info = (HfApi().model_info if kind == "model" else HfApi().dataset_info)(name)
        return info.sha or "unknown"
    except Exception:  # revision is provenance, not a reason to fail the stage
        return "unknown"


def stage(cfg: CellConfig, n_train_rows: int, n_eval_rows: int, out_dir: Path | str,
          progress: bool = True) -> Path:
    """Stages (or finishes staging) `cfg`'s model and rows in `out_dir`; returns it."""
    out = Path(out_dir)
    if (out / "DONE").exists():
        verify(out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _stage_model(cfg.model.name_or_path, out / "model")
    rows = {}
    for split, n in (("train", n_train_rows), ("eval", n_eval_rows)):
        rows[split] = _stage_rows(cfg, split, n, tokenizer, out / "rows", progress)
    atomic_write_text(out / "rows" / ROWS_FILE, json.dumps(
        {"context_length": cfg.data.context_length, "splits": rows}, indent=2))
    # the rows' tokenizer: the source's record for ids, the model's own for text it tokenized
    made_by = (rows_record(cfg.data) if cfg.data.column == "input_ids"
               else tokenizer_record(tokenizer, cfg.model.name_or_path))
    if made_by is not None:
        write_record(out / "rows", made_by)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in
                   (MANIFEST, "DONE") and not p.name.startswith("."))
    manifest = {
        "sources": {"model": cfg.model.name_or_path,
                    "model_revision": _revision(cfg.model.name_or_path, "model"),
                    "dataset": cfg.data.dataset,
                    "dataset_revision": _revision(cfg.data.dataset, "dataset"),
                    "data": vars(cfg.data), "seed": cfg.seed},
        "rows": {"train": n_train_rows, "eval": n_eval_rows,
                 "context_length": cfg.data.context_length},
        "files": {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
                  for p in files},
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    atomic_write_text(out / "DONE", "ok\n")
    return out


def _stage_model(name: str, out: Path):
    """The model and tokenizer in HF layout, into a temporary folder renamed when complete."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    if not (out / "config.json").exists():
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        AutoModelForCausalLM.from_pretrained(name).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    return tokenizer


def _stage_rows(cfg: CellConfig, split: str, n_rows: int, tokenizer, out: Path,
                progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    stream = (TokenStream(cfg.data, tokenizer, cfg.seed, cfg.data.split) if split == "train"
              else eval_stream(cfg.data, tokenizer, cfg.seed))
    shards = []
    bar = tqdm(total=n_rows, desc=f"stage {split} rows", disable=not progress, mininterval=5)
    for k, start in enumerate(range(0, n_rows, SHARD_ROWS)):
        n = min(SHARD_ROWS, n_rows - start)
        path = out / f"{split}-{k:05d}.npy"
        shards.append({"file": path.name, "rows": n})
        if path.exists():  # saved before an interruption: replay the stream past it
            for i in range(0, n, 1024):
                stream.next_batch(min(1024, n - i))
        else:
            batch = torch.cat([stream.next_batch(min(1024, n - i)) for i in range(0, n, 1024)])
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, batch.numpy().astype(np.int32))
        bar.update(n)
    bar.close()
    return {"rows": n_rows, "shards": shards}
