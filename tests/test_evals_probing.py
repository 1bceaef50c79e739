"""Sparse probing (issue 45, item 3) against sae-probes 0.4.2's own pipeline, run in its own
venv on the same GPT-2, SAE and two datasets of its wheel: the last-token activations, the
split, the latent ranking, the probes' metrics and the logreg baseline."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAELENS_PY, need

from e2e.config import CellConfig, ModelConfig
from e2e.evals.probing import (
    binary_datasets,
    find_best_reg,
    last_kept,
    last_token_resid,
    normal_split,
    prompt_ids,
    ranked,
    read_dataset,
    sparse_probe,
    wheel_path,
)
from e2e.model import load_model
from e2e.sae import SAE
from e2e.saelens import cell_meta, save_saelens

REPO = Path(__file__).resolve().parent.parent
DATASETS = ("117_us_state_FL", "130_temp_cat_Frequency")  # short prompts, ~1,000 rows each


def test_probing_equals_sae_probes_own_pipeline(gpt2_dir, tmp_path):
    need(SAELENS_PY)
    from e2e.evals.probing import WHEEL
    from e2e.lm.corpus import sources_dir

    need(sources_dir() / WHEEL)
    model = load_model(ModelConfig(str(gpt2_dir)))
    layer, max_seq_len = 2, 64  # prompts past 64 tokens are cut from the left
    torch.manual_seed(1)
    sae = SAE(64, 256)
    with torch.no_grad():
        sae.encoder.bias.sub_(0.5)
    save_saelens(sae, tmp_path / "sae",
                 cell_meta(CellConfig(model=ModelConfig(str(gpt2_dir)), layer=layer), 0))
    out = tmp_path / "ref"
    r = subprocess.run([str(SAELENS_PY), "tests/saeprobes_reference.py", str(gpt2_dir),
                        str(tmp_path / "sae"), str(layer), str(max_seq_len), str(out),
                        *DATASETS], cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    hook = f"blocks.{layer}.hook_resid_pre"
    for tag in DATASETS:
        prompts, y, size = read_dataset(tag)
        x = last_token_resid(model, prompts[:5000], layer, max_seq_len)
        theirs_x = torch.load(out / "acts" / "model_activations_tiny" / f"{tag}_{hook}.pt")
        assert x.shape == theirs_x.shape and torch.allclose(x, theirs_x, rtol=1e-4, atol=1e-5)
        assert sum(len(p) > max_seq_len for p in prompts) > 0  # some are truncated
        train, test = normal_split(y[:5000], size)
        # the probes on the latents theirs were fitted on: the same inputs, the same metrics
        acts = torch.load(out / f"codes_{tag}.pt")
        assert np.array_equal(y[train], acts["y_train"]) and np.array_equal(y[test],
                                                                            acts["y_test"])
        with torch.no_grad():  # our encoder on their rows (float32 sums in another order)
            assert torch.allclose(sae.encode(theirs_x[train]), acts["X_train"], atol=1e-5)
        ours = sparse_probe(acts["X_train"], y[train], acts["X_test"], y[test])
        theirs = json.loads((out / "sae" / "sae_probes_tiny" / "normal_setting"
                             / f"{tag}_{hook}_l1.json").read_text())
        order = ranked(acts["X_train"], torch.as_tensor(y[train]))
        for entry in theirs:
            k = entry["k"]
            assert order[:k].tolist() == entry["indices"], (tag, k)
            for name in ("test_acc", "test_auc", "test_f1", "val_auc"):
                assert getattr(ours[k], name) == pytest.approx(entry[name], abs=1e-9), (
                    tag, k, name)
        base = find_best_reg(theirs_x[train].numpy(), y[train], theirs_x[test].numpy(),
                             y[test], "l2")
        (theirs_base,) = json.loads((out / "baseline" / "baseline_results_tiny"
                                     / "normal_setting" / f"{tag}_{hook}_logreg.json"
                                     ).read_text())
        assert theirs_base["num_train"] == len(train)
        for name in ("test_acc", "test_auc", "test_f1", "val_auc"):
            assert getattr(base, name) == pytest.approx(theirs_base[name], abs=1e-9), tag


def test_the_wheel_lists_its_datasets_and_a_name_not_there_is_named():
    try:
        wheel_path()
    except Exception:
        need(Path("/nonexistent-sae-probes-wheel"))
    tags = binary_datasets()
    assert len(tags) == 113 and "117_us_state_FL" in tags
    prompts, y, size = read_dataset("117_us_state_FL")
    assert size == len(prompts) == len(y) == 1000 and set(np.unique(y)) == {0, 1}
    with pytest.raises(ValueError, match="not a dataset of sae-probes 0.4.2"):
        read_dataset("117_us_state_ZZ")


def test_each_prompt_is_read_at_its_last_position_the_dictionary_acts_on(gpt2_dir):
    """sae-probes reads the last token; where the cell skips or excludes it (an EOS that ends
    a prompt; position 0) the last kept position before it, as the hooked forward gives it."""
    from e2e.model import Positions

    keep = Positions(1, (0, 2))
    assert last_kept([[1, 5, 7, 0], [1, 0, 6, 2], [1, 3], [4, 0, 9]], keep) == [2, 2, 1, 2]
    assert last_kept([[1, 5, 7, 0]]) == [3]  # nothing left out: sae-probes' last token
    with pytest.raises(ValueError, match="prompt 1 has no position the dictionary acts on"):
        last_kept([[1, 5], [7, 0]], keep)
    model = load_model(ModelConfig(str(gpt2_dir)), "cpu")
    eos = model.tokenizer.eos_token_id
    prompts = ["In the beginning God created", "the heaven and the earth"]
    ids = [prompt_ids(model.tokenizer, p) for p in prompts]
    ended = [p + model.tokenizer.decode([eos]) for p in prompts]  # each now ends in an EOS
    got = last_token_resid(model, ended, 1, positions=Positions(0, (eos,)))
    _, cache = model.run_with_cache(torch.tensor([ids[0]]), names_filter="blocks.1.hook_resid_pre")
    torch.testing.assert_close(got[0], cache["blocks.1.hook_resid_pre"][0, -1], atol=1e-5,
                               rtol=1e-5)
    plain = last_token_resid(model, ended, 1)
    assert not torch.allclose(plain[0], got[0])  # the EOS's own residual differs
