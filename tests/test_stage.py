"""Staging (e2e.data.stage, jobs/stage.py) without the hub: the smoke grid's local model and dataset
folder stand in for the hub ids."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import e2e.data.stage as stage_writer
import e2e.data.staged as st
from e2e.config import ConfigError
from e2e.data.stage import rows_needed, stage, staged_config
from e2e.data.staged import StageError, verify
from e2e.data.tokens import DataUnavailableError, TokenStream, check_dataset
from e2e.io import cell_paths
from e2e.store import read_metrics
from e2e.train import train
from jobs.plan.make import make_plan

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cfg(smoke_cells):
    (c,) = [c for c in smoke_cells if c.loss.setting == "e2e"]
    return c


@pytest.fixture(autouse=True)
def _small_shards(monkeypatch):
    monkeypatch.setattr(stage_writer, "SHARD_ROWS", 40)  # several shards even on tiny budgets
    st._VERIFIED.clear()


def test_a_cell_trained_from_the_stage_is_identical_to_one_from_the_source(cfg, tmp_path):
    d = stage(cfg, *rows_needed(cfg), tmp_path / "stage", progress=False)
    manifest = verify(d)
    # eval rows: the 8 of the evals, and the 16 of the post-training alive pass (512 tokens)
    assert manifest["rows"] == {"train": 96, "eval": 16, "context_length": 32}
    assert manifest["sources"]["model_revision"] == "local"
    assert len([f for f in manifest["files"] if f.startswith("rows/train-")]) == 3
    staged = staged_config(cfg, d)
    assert staged.model.name_or_path == str(d / "model")
    train(cfg, tmp_path / "source", progress=False)
    train(staged, tmp_path / "staged", progress=False)
    a, b = (load_file(str(cell_paths(tmp_path / x).sae / "sae_weights.safetensors"))
            for x in ("source", "staged"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (read_metrics(cell_paths(tmp_path / x).metrics) for x in ("source", "staged"))
    assert ma["eval"] == mb["eval"] and ma["eval"]


def test_an_interrupted_stage_resumes_to_the_same_files(cfg, tmp_path):
    whole = verify(stage(cfg, *rows_needed(cfg), tmp_path / "whole", progress=False))
    part = stage(cfg, *rows_needed(cfg), tmp_path / "part", progress=False)
    for f in ("DONE", "manifest.json", "rows/rows.json", "rows/train-00002.npy",
              "rows/eval-00000.npy"):
        (part / f).unlink()  # as if killed after two train shards
    with pytest.raises(StageError, match="not a complete stage"):
        verify(part)
    assert verify(stage(cfg, *rows_needed(cfg), part, progress=False))["files"] == whole["files"]


def test_a_corrupt_or_short_stage_is_refused(cfg, tmp_path):
    d = stage(cfg, *rows_needed(cfg), tmp_path / "stage", progress=False)
    staged = staged_config(cfg, d)
    with pytest.raises(StageError, match="reads past them"):
        TokenStream(staged.data, None, 0, "train").next_batch(97)
    shard = d / "rows" / "train-00001.npy"
    a = np.load(shard)
    a[0, 0] += 1
    np.save(shard, a)  # same size, other bytes
    st._VERIFIED.clear()
    with pytest.raises(DataUnavailableError, match="does not match its sha256"):
        check_dataset(staged.data)
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(StageError, match="wrong size"):
        verify(d)


def _args(smoke_cells, root):
    c = smoke_cells[0]
    return [f"root={root}", "grid=paper", f"model.name_or_path={c.model.name_or_path}",
            f"data.dataset={c.data.dataset}", "data.context_length=32", "layers=[1]",
            "settings=[e2e]", "sparsity_coeffs=[1]", "optim.n_samples=48",
            "optim.batch_size=4", "optim.grad_accum_steps=1", "optim.warmup_samples=8",
            "eval.n_samples=8", "eval.batch_size=4", "eval.alive_pass_tokens=256",
            "sae.dict_size_to_input_ratio=4",
            "executor=local", "container=none", "device=cpu"]


def test_stage_cli_then_submission_reads_only_the_stage(smoke_cells, tmp_path):
    args = _args(smoke_cells, tmp_path)
    with pytest.raises(ConfigError, match="source=staged but not staged"):
        make_plan([*args, "source=staged"])
    plan = make_plan([*args, "dry_run=true"])
    assert [s.status for s in plan.stages] == ["to stage"]
    assert "sources not staged" in " ".join(plan.notes)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "jobs/stage.py", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "staged: " in r.stdout
    plan = make_plan([*args, "source=staged"])
    (cell,) = plan.cells
    sources = tmp_path / "_sources"
    assert cell.cfg.model.name_or_path.startswith(str(sources))
    assert cell.cfg.data.dataset.startswith(str(sources))
    assert make_plan(args).cells[0].id == cell.id  # auto takes the complete stage
    hub = make_plan([*args, "source=hub"]).cells[0]
    assert hub.cfg.data.dataset == smoke_cells[0].data.dataset
    manifest = json.loads(next(sources.glob("*/manifest.json")).read_text())
    assert manifest["rows"]["train"] == 48 and manifest["rows"]["eval"] == 8


def test_a_grid_that_builds_its_sources_has_nothing_to_stage(tmp_path):
    with pytest.raises(ConfigError, match="nothing to stage"):
        make_plan(["grid=tiny", f"root={tmp_path}", "stage=true", "dry_run=true"])
    assert not list(tmp_path.iterdir())


def test_staged_rows_are_the_rows_the_stream_yields(cfg, tmp_path):
    d = stage(replace(cfg, seed=3), *rows_needed(cfg), tmp_path / "s", progress=False)
    from e2e.data.tokens import TokenStream as TS

    src = TS(cfg.data, None, 3, cfg.data.split)
    want = torch.cat([src.next_batch(7) for _ in range(10)])
    got = TS(staged_config(cfg, d).data, None, 3, "train")
    assert torch.equal(torch.cat([got.next_batch(5) for _ in range(14)]), want)


def test_a_rotary_model_stages_and_trains_identically(cfg, tmp_path):
    """A Llama (rotary, RMSNorm) with the smoke grid's tokenizer: staged with its rows (and
    their tokenizer's record), a cell from the stage equals one from the source; the record
    travels with the rows."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from e2e.config import ModelConfig
    from e2e.data.tokenizer_id import rows_record, tokenizer_record

    tok = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32,
                                         intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64))
    llama.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    c = replace(cfg, model=ModelConfig(str(tmp_path / "llama")))
    d = stage(c, *rows_needed(c), tmp_path / "stage", progress=False)
    staged = staged_config(c, d)
    assert rows_record(staged.data) == rows_record(c.data)
    assert rows_record(staged.data)["fingerprint"] == tokenizer_record(tok, "")["fingerprint"]
    train(c, tmp_path / "source", progress=False)
    train(staged, tmp_path / "staged", progress=False)
    ma, mb = (read_metrics(cell_paths(tmp_path / x).metrics) for x in ("source", "staged"))
    assert ma["eval"] == mb["eval"] and ma["eval"]["kl_orig_sae"] > 0
