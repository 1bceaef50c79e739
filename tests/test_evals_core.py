"""SAEBench's core evaluation (issue 45, item 4): every metric SAELens's own code computes
(`sae_lens.evals`, run in its own venv on the same GPT-2, SAE and tokens, separators mid-row
ignored) equals ours; SAEBench's own misc formulas against their definitions written out; its
JSON schema."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAELENS_PY, need

from e2e import ksvd
from e2e.config import CellConfig, ModelConfig
from e2e.evals.core import CATEGORIES, core_eval, max_cosine_sim, misc_metrics, weight_metrics
from e2e.evals.saebench import eval_output, write_output
from e2e.model import Positions, load_model
from e2e.sae import SAE
from e2e.saelens import cell_meta, save_saelens

REPO = Path(__file__).resolve().parent.parent


def test_core_equals_saelens_own_evaluation_with_separators_mid_row(gpt2_dir, tmp_path):
    need(SAELENS_PY)
    model = load_model(ModelConfig(str(gpt2_dir)))
    layer, ids = 2, (0, 2)
    torch.manual_seed(1)
    sae = SAE(64, 256)
    with torch.no_grad():  # codes that fire sparsely, a reconstruction neither perfect nor nil
        sae.encoder.bias.sub_(0.5)
    batches = torch.randint(3, model.cfg.d_vocab, (3, 4, 16))
    batches[0, 1, 5] = batches[1, 2, 9] = batches[2, 0, 3] = 0  # separators mid-row
    batches[1, 3, 15] = batches[2, 3, 0] = 2
    save_saelens(sae, tmp_path / "sae",
                 cell_meta(CellConfig(model=ModelConfig(str(gpt2_dir)), layer=layer), 0))
    np.save(tmp_path / "tokens.npy", batches.numpy())
    r = subprocess.run([str(SAELENS_PY), "tests/saelens_core.py", str(gpt2_dir),
                        str(tmp_path / "sae"), str(tmp_path / "tokens.npy"),
                        ",".join(map(str, ids)), str(tmp_path / "out.json")], cwd=REPO,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    theirs = json.loads((tmp_path / "out.json").read_text())
    metrics, details = core_eval(model, sae, layer, list(batches), Positions(0, ids))
    ours = {k: v for cat in metrics.values() for k, v in cat.items()}
    compared = set(theirs["metrics"]) & set(ours)
    assert len(compared) == 17, sorted(compared)  # all but SAEBench's own misc and token stats
    for k in sorted(compared):
        # float32 model, two TransformerLens versions: a few ulps of the logits
        assert ours[k] == pytest.approx(theirs["metrics"][k], rel=2e-4, abs=1e-6), k
    assert 0.05 < ours["ce_loss_score"] < 0.95 and 1 < ours["l0"] < 255
    for k, v in theirs["features"].items():
        got = np.array([row[k] for row in details])
        assert np.allclose(got, np.array(v, dtype=float), rtol=1e-4, atol=1e-6,
                           equal_nan=True), k
    assert ours["total_tokens_eval_reconstruction"] == batches.numel()


def test_saebench_misc_metrics_and_max_cosines_as_written():
    torch.manual_seed(0)
    w = torch.randn(8, 7)
    unit = w / w.norm(dim=0)
    cos = unit.T @ unit
    cos.fill_diagonal_(-2)
    assert torch.allclose(max_cosine_sim(w, chunk=3), cos.max(1).values, atol=1e-6)
    density = torch.tensor([0.0, 0.005, 0.02, 0.5])
    weights = {"max_encoder_cosine_sim": torch.tensor([0.1, 0.2, 0.3, 0.4]),
               "max_decoder_cosine_sim": torch.tensor([0.5, 0.5, 0.5, 0.9])}
    m = misc_metrics(density, weights)
    assert m == pytest.approx({
        "frac_alive": 0.75, "freq_over_1_percent": 0.5, "freq_over_10_percent": 0.25,
        "normalized_freq_over_1_percent": 0.52 / 0.525,
        "normalized_freq_over_10_percent": 0.5 / 0.525,
        "average_max_encoder_cosine_sim": 0.25, "average_max_decoder_cosine_sim": 0.6})


def test_a_fitted_dictionary_has_no_encoder_metrics_and_json_writes_them_as_saebench_does(
        tmp_path):
    g = torch.Generator().manual_seed(0)
    d = ksvd.KSVDDictionary(torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=0),
                            torch.zeros(8), max_nnz=3)
    w = weight_metrics(d)
    assert torch.isnan(w["encoder_norm"]).all() and not torch.isnan(
        w["max_decoder_cosine_sim"]).any()
    metrics = {c: {k: float("nan") for k in names} for c, names in CATEGORIES.items()}
    record = eval_output("core", {"context_size": 16}, metrics,
                         [{"index": 0, "encoder_norm": float("nan")}], {"d_sae": 16})
    write_output(tmp_path / "core.json", record)
    back = json.loads((tmp_path / "core.json").read_text())
    assert set(back) == {"eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis",
                         "eval_result_metrics", "eval_result_details",
                         "eval_result_unstructured", "sae_bench_commit_hash", "sae_lens_id",
                         "sae_lens_release_id", "sae_lens_version", "sae_cfg_dict"}
    assert back["eval_result_metrics"]["sparsity"]["l0"] == -1
    assert back["eval_result_details"] == [{"index": 0, "encoder_norm": -1}]
