"""Feature absorption (issue 45, item 2) against SAEBench 0.6.0's own code, run stage by stage
in its own venv (tests/saebench_absorption.py) on one GPT-2 that spells (each letter-only
token's embedding carries a direction of its first letter) and one SAE with a latent per
letter: the vocabulary, the prompts, the residuals, the ground-truth probe, the k-sparse
probes' latents and F1s, the feature splits, the words scored and every letter's absorption."""

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SAELENS_PY, need

from e2e.config import CellConfig, ModelConfig
from e2e.evals.absorption import absorption_eval, absorption_of_words
from e2e.evals.spelling import (
    LETTERS,
    SpellingError,
    alpha_tokens,
    alpha_vocab,
    icl_prompt,
    spelling_data,
    spelling_split,
    word_position,
)
from e2e.model import load_model
from e2e.sae import SAE
from e2e.saelens import cell_meta, save_saelens

REPO = Path(__file__).resolve().parent.parent
LAYER, SEED, MIN_F1 = 1, 3, 0.3


def _words() -> list[str]:
    """20 made-up words per letter, half capitalised."""
    rng = random.Random(0)
    out = []
    for c in LETTERS:
        for i in range(20):
            w = c + "".join(rng.choice("aeiou" if j % 2 else "bdfgklmnprstvz")
                            for j in range(rng.randint(2, 5)))
            out.append(w.capitalize() if i % 2 else w)
    return out


@pytest.fixture(scope="module")
def speller(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """(a GPT-2 folder whose letter-only tokens' embeddings carry their first letter's
    direction, the 26 directions (26, 64))."""
    import transformers as T

    from e2e.lm.pretrain import train_tokenizer

    path = tmp_path_factory.mktemp("speller")
    words = _words()
    text = [f"{w} has the first letter: {w[0].upper()}\nthe {w} and {w}" for w in words]
    tok = train_tokenizer(text * 3, 1200)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(T.GPT2Config(
        vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=160))
    dirs = torch.linalg.qr(torch.randn(64, 26))[0].T  # orthonormal rows
    with torch.no_grad():
        for w in alpha_vocab(tok):
            ids = tok(w)["input_ids"]
            if len(ids) == 1:
                model.transformer.wte.weight[ids[0]] += 0.5 * dirs[LETTERS.index(
                    w.strip()[0].lower())]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "n_ctx": 160}))
    return path, dirs


def _planted_sae(dirs: torch.Tensor) -> SAE:
    """128 latents: one per letter (silent where the letter is weak), one absorbing "a" into
    "b", and 101 leaning towards a letter (cosine ~0.8 with it): absorbers, several per letter,
    so that every branch of the absorption rules is taken (fractions strictly between 0 and 1,
    more than 3 candidate absorbers, full absorption)."""
    torch.manual_seed(1)
    sae = SAE(64, 128)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        sae.encoder.weight[:26] = dirs
        sae.encoder.bias[:26] = -0.35
        sae.decoder.weight[:, :26] = dirs.T
        sae.encoder.weight[26] = dirs[0] + dirs[1]
        sae.decoder.weight[:, 26] = dirs[0] + dirs[1]
        for j in range(27, 128):
            v = F.normalize(0.8 * dirs[j % 26] + torch.randn(64, generator=g) / 8, dim=0)
            sae.encoder.weight[j] = v
            sae.decoder.weight[:, j] = v
            sae.encoder.bias[j] = -0.05
    return sae


@pytest.fixture(scope="module")
def task(speller):
    """(the model, its spelling task at LAYER)."""
    model = load_model(ModelConfig(str(speller[0])))
    return model, spelling_data(model, LAYER, SEED)


def test_absorption_equals_saebench_own_code(speller, task, tmp_path):
    need(SAELENS_PY)
    path, dirs = speller
    model, data = task
    vocab = alpha_vocab(model.tokenizer)
    assert word_position(model.tokenizer) == -6
    sae = _planted_sae(dirs)
    save_saelens(sae, tmp_path / "sae",
                 cell_meta(CellConfig(model=ModelConfig(str(path)), layer=LAYER), 0))
    out = tmp_path / "ref"
    out.mkdir()
    (out / "vocab.json").write_text(json.dumps(vocab))
    r = subprocess.run([str(SAELENS_PY), "tests/saebench_absorption.py", str(path),
                        str(tmp_path / "sae"), str(LAYER), str(SEED), str(MIN_F1), str(out)],
                       cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(vocab) == json.loads((out / "their_vocab.json").read_text())
    theirs = json.loads((out / "prompts.json").read_text())
    assert [[list(t) for t in side] for side in spelling_split(vocab, SEED)] == theirs

    ref = torch.load(out / "probe.pt")
    assert data.dropped == 0
    assert torch.allclose(data.x_train, ref["x_train"], atol=1e-5)
    assert torch.allclose(data.x_test, ref["x_test"], atol=1e-5)
    assert torch.allclose(data.probe_weight, ref["weight"], atol=1e-4)
    res = json.loads((out / "result.json").read_text())
    assert data.probe_f1 == pytest.approx([res["probe_f1"][c] for c in LETTERS], abs=1e-9)
    assert data.abs_words == res["abs_words"]

    metrics, details, extra = absorption_eval(sae, data, SEED, min_f1=MIN_F1, min_letters=1)
    assert extra["main_latents"] == {c: res["main_latents"][c] for c in extra["main_latents"]}
    for k, by in extra["k_sparse_f1"].items():
        assert by == pytest.approx({c: res["k_sparse_f1"][str(k)][c] for c in by}, abs=1e-9)
    assert len(details) == len(res["details"]) >= 20
    for ours, their in zip(details, res["details"], strict=True):
        assert ours == pytest.approx(their, abs=1e-6)
    mean = metrics["mean"]  # the planted absorbers at work
    assert 0 < mean["mean_absorption_fraction_score"] < 1 and mean["mean_full_absorption_score"] > 0
    for name, v in res["mean"].items():
        assert metrics["mean"][name] == pytest.approx(v, abs=1e-6)


def test_every_kind_of_dictionary_is_scored(task):
    """A TopK SAE and a DB-KSVD dictionary (no encoder: matching pursuit) on the same task."""
    from e2e.ksvd.dictionary import KSVDDictionary

    _, data = task
    torch.manual_seed(2)
    topk = SAE(64, 96, k=8)
    ksvd = KSVDDictionary(torch.nn.functional.normalize(torch.randn(64, 96), dim=0),
                          torch.zeros(64), max_nnz=8)
    for d in (topk, ksvd):
        metrics, details, extra = absorption_eval(d, data, SEED, min_f1=MIN_F1, min_letters=1)
        assert 0 <= metrics["mean"]["mean_absorption_fraction_score"] <= 1
        assert len(details) >= 20 and all(1 <= len(m) <= 10
                                           for m in extra["main_latents"].values())


def test_absorption_fraction_by_hand():
    """One word, probe along e0: main latent 0 carries 1 of the residual's 4, latent 1
    (cosine 0.8) 2.4, latent 2 (cosine 0.05, under the 0.1 floor) 0.1."""
    x = torch.tensor([[4.0, 0.0, 0.0]])
    codes = torch.tensor([[1.0, 3.0, 2.0]])
    cos = torch.tensor([1.0, 0.8, 0.05])
    frac, full = absorption_of_words(x, codes, torch.tensor([2.0, 0.0, 0.0]), cos, [0])
    # absorbed = min(2.4, 4 - 1) = 2.4: fraction 2.4 / (2.4 + 1)
    assert frac.item() == pytest.approx(2.4 / 3.4) and not full.item()
    frac, full = absorption_of_words(x, torch.tensor([[0.0, 3.0, 2.0]]),
                                     torch.tensor([1.0, 0.0, 0.0]), cos, [0])
    assert frac.item() == 1.0 and full.item()  # main silent; latent 1: 2.4 of 4 ≥ 40%
    frac, _ = absorption_of_words(x, torch.tensor([[1.0, 1.0, 2.0]]),
                                  torch.tensor([1.0, 0.0, 0.0]), cos, [0])
    assert frac.item() == 0.0  # 0.8 of 4 < 40%: not absorption
    # four absorbers of 2 each (cosine 1) against a residual projection of 10: the top 3 count
    x10, cos5 = torch.tensor([[10.0, 0.0, 0.0]]), torch.ones(5)
    frac, full = absorption_of_words(x10, torch.tensor([[1.0, 2.0, 2.0, 2.0, 2.0]]),
                                     torch.tensor([1.0, 0.0, 0.0]), cos5, [0])
    assert frac.item() == pytest.approx(6 / 7) and not full.item()
    # main silent, one latent carries 5 of 10: full absorption only if its cosine is ≥ 0.025
    for c, want in ((0.03, True), (0.02, False)):
        frac, full = absorption_of_words(
            x10, torch.tensor([[0.0, 5 / c, 0.0, 0.0, 0.0]]), torch.tensor([1.0, 0.0, 0.0]),
            torch.tensor([1.0, c, 1.0, 1.0, 1.0]), [0])
        assert full.item() is want and frac.item() == 0.0  # under the 0.1 floor: no fraction


def test_a_prompt_is_saebench_shape_and_bad_input_is_one_line(task):
    model, data = task
    p = icl_prompt(" kabo", [" dog", "Cat"] * 10, random.Random(0))
    lines = p.split("\n")
    assert lines[0] == "" and len(lines) == 12 and lines[-1] == " kabo has the first letter:"
    assert all(ln.endswith(("letter: D", "letter: C")) for ln in lines[1:-1])

    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    digits = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(
        {"1": 0, "2": 1, "!": 2, "<unk>": 3}, unk_token="<unk>")))
    with pytest.raises(SpellingError, match="no token made of letters only"):
        alpha_vocab(digits)
    import dataclasses

    mute = dataclasses.replace(data, probe_f1=[0.0] * 26)
    with pytest.raises(SpellingError, match="spells 0 letters .* fewer than the 20"):
        mute.check()
    data.check(MIN_F1, 20)  # this model spells


def test_words_whose_token_the_dictionary_never_acts_on_are_left_out(task):
    """`data.exclude_tokens` naming letter-only tokens: the task is built without those words
    (the residual there is never the dictionary's input); other exclusions change nothing."""
    model, _ = task
    tok = model.tokenizer
    tokens = alpha_tokens(tok)
    (i, word), (j, other) = tokens[3], tokens[10]
    assert alpha_vocab(tok, (i, j)) == [w for t, w in tokens if t not in (i, j)]
    assert word not in alpha_vocab(tok, (i,)) and other in alpha_vocab(tok, (i,))
    special = tuple(tok.all_special_ids)
    assert special and alpha_vocab(tok, special) == alpha_vocab(tok)  # none is letter-only
