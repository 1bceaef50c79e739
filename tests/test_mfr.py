"""Mutual Feature Regularization: similarities, penalty, synthetic data, N SAEs per cell."""

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from e2e.analysis import cosine
from e2e.config import CellConfig, ConfigError, MFRConfig, SAEConfig, SyntheticConfig
from e2e.data.synthetic import SyntheticStream, sample, true_features, truth_metrics
from e2e.io import cell_paths
from e2e.saelens import load_saelens
from e2e.store import read_metrics
from e2e.train import mfr, train
from jobs.plan.grid import expand
from jobs.plan.grids import GRIDS


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=0)


def test_similarities_of_a_dictionary_and_its_permutation_are_one():
    a = _unit(8, 12)
    b = a[:, torch.randperm(12)]
    for name, fn in mfr.SIMILARITY.items():
        assert float(fn(a, b)) == pytest.approx(1.0, abs=1e-6), name
    assert float(mfr.penalty([a, b, a], "symmetric_max")) == pytest.approx(0.0, abs=1e-6)


def test_max_similarity_chunked_equals_the_dense_formula_with_its_gradient(monkeypatch):
    monkeypatch.setattr(cosine, "CHUNK", 3)  # several chunks of a's columns
    a = _unit(6, 10, seed=1).requires_grad_()
    b = _unit(6, 7, seed=2).requires_grad_()
    got = mfr.symmetric_max_similarity(a, b)
    cos = a.T @ b
    want = 0.5 * (cos.max(1).values.mean() + cos.max(0).values.mean())
    assert float(got.detach()) == pytest.approx(float(want.detach()), abs=1e-6)
    ga = torch.autograd.grad(got, (a, b))
    gw = torch.autograd.grad(want, (a, b))
    for x, y in zip(ga, gw, strict=True):
        assert torch.allclose(x, y, atol=1e-6)


def test_hungarian_is_the_best_one_to_one_matching_and_refuses_large_dictionaries():
    a, b = _unit(5, 4, seed=3), _unit(5, 4, seed=4)
    cos = (a.T @ b).numpy()
    best = max(np.mean([cos[i, p[i]] for i in range(4)]) for p in itertools.permutations(range(4)))
    assert float(mfr.hungarian_similarity(a, b)) == pytest.approx(best, abs=1e-6)
    with pytest.raises(ValueError, match="too slow"):
        mfr.hungarian_similarity(_unit(2, 5000), _unit(2, 5000))


def test_warmup_weight_rises_from_zero_to_one_along_a_cosine():
    assert mfr.warmup_weight(0, 100) == pytest.approx(0.0)
    assert mfr.warmup_weight(50, 100) == pytest.approx(0.5)
    assert mfr.warmup_weight(100, 100) == mfr.warmup_weight(500, 100) == 1.0
    assert mfr.warmup_weight(0, 0) == 1.0


def test_synthetic_samples_are_sparse_combinations_of_one_group_and_resume_exactly():
    cfg = SyntheticConfig(d=16, n_features=40, n_groups=3, group_size=12, active=5)
    truth = true_features(cfg)
    x, codes = sample(cfg, truth, 64, torch.Generator().manual_seed(0))
    assert torch.allclose(x, codes @ truth.T, atol=1e-5)
    nz = codes > 0
    assert (nz.sum(1) == 5).all()
    groups = nz.nonzero()[:, 1] // 12
    rows = nz.nonzero()[:, 0]
    for r in range(64):  # one group per sample, and features 36..39 never fire
        assert len(set(groups[rows == r].tolist())) == 1
    assert not nz[:, 36:].any()
    shared = replace(cfg, shared_support_per_batch=True)
    _, codes = sample(shared, truth, 64, torch.Generator().manual_seed(0))
    supports = {}
    for r in range(64):
        s = tuple(codes[r].nonzero().flatten().tolist())
        supports.setdefault(s[0] // 12, set()).add(s)
    assert all(len(v) == 1 for v in supports.values())  # one support per group per batch
    a = SyntheticStream(cfg, seed=3)
    [a.next_batch(8) for _ in range(3)]
    b = SyntheticStream(cfg, seed=3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next_batch(8), b.next_batch(8))


def test_truth_metrics_score_the_true_dictionary_one_and_a_random_one_low():
    cfg = SyntheticConfig(d=32, n_features=48, n_groups=4, group_size=12, active=4)
    truth = true_features(cfg)
    perfect = truth_metrics(torch.nn.functional.normalize(truth, dim=0)[:, torch.randperm(48)],
                            truth)
    assert perfect == pytest.approx({"mmcs_true": 1.0, "recovered_true": 1.0})
    rand = truth_metrics(_unit(32, 48, seed=9), truth)
    assert rand["mmcs_true"] < 0.5 and rand["recovered_true"] == 0.0


def test_invalid_topk_and_mfr_options_fail_with_the_field_named():
    with pytest.raises(ConfigError, match="loss.sparsity_coeff.*TopK"):
        CellConfig(sae=SAEConfig(activation="topk", k=8))
    with pytest.raises(ConfigError, match="sae.k"):
        SAEConfig(activation="topk", k=0)
    with pytest.raises(ConfigError, match="mfr.coeff"):
        MFRConfig(n_saes=1, coeff=0.5)
    with pytest.raises(ConfigError, match="loss.setting.*synthetic"):
        CellConfig(source="synthetic")
    base = GRIDS["synthetic"].base
    with pytest.raises(ConfigError, match="mfr.similarity.*Hungarian"):
        replace(base, sae=replace(base.sae, dict_size_to_input_ratio=32.0),
                mfr=MFRConfig(n_saes=2, similarity="hungarian"))


def _tiny_synthetic(**mfr_kw) -> CellConfig:
    base = [c for c in expand(GRIDS["synthetic"], Path("/unused"))][0]
    return replace(base, synthetic=SyntheticConfig(d=32, n_features=64, n_groups=4,
                                                   group_size=16, active=4),
                   sae=replace(base.sae, k=4),
                   optim=replace(base.optim, lr=1e-2, warmup_samples=64, batch_size=64,
                                 n_samples=64 * 40),
                   eval=replace(base.eval, every_samples=64 * 10, n_samples=256,
                                batch_size=128, checkpoint_every_steps=7,
                                grad_norm_after_samples=0, alive_pass_tokens=256),
                   mfr=MFRConfig(warmup_steps=10, **mfr_kw))


def test_an_mfr_cell_saves_every_sae_and_reports_each_and_their_mean(tmp_path):
    cfg = _tiny_synthetic(n_saes=3, coeff=1.0, similarity="hungarian")
    assert train(cfg, tmp_path / "cell", progress=False) == "done"
    p = cell_paths(tmp_path / "cell")
    ev = read_metrics(p.metrics)["eval"]
    for name in ("mmcs_true", "recovered_true", "l0", "mse/synthetic"):
        per = [ev[f"sae{i}/{name}"] for i in range(3)]
        assert ev[name] == pytest.approx(np.mean(per)), name
    assert ev["l0"] <= 4 + 1e-6
    for name in ("hungarian", "max", "symmetric_max"):
        assert 0 < ev[f"mfr_similarity/{name}"] <= 1
    weights = []
    for d in ("sae", "sae_1", "sae_2"):
        sae, scfg = load_saelens(p.root / d)
        assert scfg["architecture"] == "topk" and scfg["k"] == 4
        weights.append(load_file(str(p.root / d / "sae_weights.safetensors"))["W_dec"])
    assert not torch.equal(weights[0], weights[1])  # different init seeds
    assert list((tmp_path / "_truth").glob("*.npy"))  # the ground truth beside the grid


def test_the_penalty_makes_the_dictionaries_more_alike_than_independent_training(tmp_path):
    sims = {}
    for coeff in (0.0, 3.0):
        cfg = _tiny_synthetic(n_saes=2, coeff=coeff)
        train(cfg, tmp_path / str(coeff), progress=False)
        ev = read_metrics(cell_paths(tmp_path / str(coeff)).metrics)["eval"]
        sims[coeff] = ev["mfr_similarity/symmetric_max"]
    assert sims[3.0] > sims[0.0] + 0.05, sims


def test_an_interrupted_mfr_cell_resumes_bit_identical(tmp_path):
    cfg = _tiny_synthetic(n_saes=2, coeff=1.0)
    train(cfg, tmp_path / "straight", progress=False)
    polls = iter(range(1000))
    assert train(cfg, tmp_path / "resumed", progress=False,
                 should_stop=lambda: next(polls) == 17) == "interrupted"
    assert train(cfg, tmp_path / "resumed", progress=False) == "done"
    for d in ("sae", "sae_1"):
        a = load_file(str(tmp_path / "straight" / d / "sae_weights.safetensors"))
        b = load_file(str(tmp_path / "resumed" / d / "sae_weights.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    ma = read_metrics(cell_paths(tmp_path / "straight").metrics)
    mb = read_metrics(cell_paths(tmp_path / "resumed").metrics)
    for k in ma["eval_history"]:
        assert np.array_equal(ma["eval_history"][k], mb["eval_history"][k]), k


@pytest.mark.parametrize("setting", ["local", "e2e", "e2e_ds"])
def test_mfr_topk_saes_train_on_the_language_model(smoke_cells, tmp_path, setting):
    (cfg,) = [c for c in smoke_cells if c.loss.setting == setting]
    cfg = replace(cfg, sae=SAEConfig(dict_size_to_input_ratio=2.0, activation="topk", k=4),
                  loss=replace(cfg.loss, sparsity_coeff=0.0),
                  mfr=MFRConfig(n_saes=2, coeff=1.0, warmup_steps=2))
    assert train(cfg, tmp_path, progress=False) == "done"
    ev = read_metrics(cell_paths(tmp_path).metrics)["eval"]
    for k in ("ce_loss_increase", "kl_orig_sae", "sae0/l0", "sae1/ce_loss_increase",
              "mfr_similarity/symmetric_max"):
        assert np.isfinite(ev[k]), k
    assert ev["l0"] <= 4 + 1e-6
    assert (tmp_path / "sae_1" / "cfg.json").exists()


def test_mfr_saes_train_only_on_kept_positions_a_common_token_masked_mid_row(smoke_cells,
                                                                              tmp_path):
    """The pack's SAEs and their penalty see the kept positions only (the smoke LM's commonest
    token excluded, position 0 skipped): the cell trains, every SAE's cfg.json names the ids
    it never acted on, and the SAEs ran on fewer positions than the model."""
    import json

    from e2e.data.tokens import TokenStream
    from e2e.model import load_model

    (cfg,) = [c for c in smoke_cells if c.loss.setting == "local"]
    model = load_model(cfg.model)
    common = int(TokenStream(cfg.data, model.tokenizer, cfg.seed, cfg.data.split).next_batch(
        cfg.eval.batch_size)[:, 1:].flatten().mode().values)
    cfg = replace(cfg, sae=SAEConfig(dict_size_to_input_ratio=2.0, activation="topk", k=4),
                  loss=replace(cfg.loss, sparsity_coeff=0.0),
                  mfr=MFRConfig(n_saes=2, coeff=1.0, warmup_steps=2),
                  data=replace(cfg.data, skip_positions=1, exclude_tokens=f"special,{common}"))
    assert train(cfg, tmp_path, progress=False) == "done"
    m = read_metrics(cell_paths(tmp_path).metrics)
    for k in ("sae0/l0", "sae1/l0", "mfr_similarity/symmetric_max", "ce_loss_increase"):
        assert np.isfinite(m["eval"][k]), k
    for d in (cell_paths(tmp_path).sae, tmp_path / "sae_1"):
        meta = json.loads((d / "cfg.json").read_text())
        assert common in meta["exclude_special_tokens"] and meta["seqpos_slice"][0] == 1
    # each of the n SAEs ran on the kept positions; the model on every one
    assert m["attrs"]["tokens_sae"] < cfg.mfr.n_saes * m["attrs"]["tokens_prefix"]


SMALL_SYNTHETIC = [  # the synthetic grid, shrunk to seconds
    "synthetic.d=32", "synthetic.n_features=64", "synthetic.n_groups=4", "synthetic.group_size=16",
    "synthetic.active=4", "sae.k=4", "optim.lr=1e-2", "optim.warmup_samples=64",
    "optim.batch_size=64", "optim.n_samples=1280", "eval.every_samples=640",
    "eval.n_samples=256", "eval.batch_size=128", "eval.grad_norm_after_samples=0",
    "eval.alive_pass_tokens=256",
    "mfr.warmup_steps=5", "sweep.sae.k=[4]", "sweep.mfr.n_saes=[2]",
    "sweep.mfr.coeff=[0,3]", "sweep.seed=[0,1]"]


def test_synthetic_grid_runs_through_submit_and_the_collector_compares_mfr_with_baseline(
        tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(repo / "jobs" / "submit.py"), "grid=synthetic",
                        f"root={tmp_path}", "executor=local", "wait=true", *SMALL_SYNTHETIC],
                       capture_output=True, text=True, timeout=600, cwd=repo)
    assert r.returncode == 0, r.stdout + r.stderr
    results = tmp_path / "synthetic" / "results"
    cells = [d for d in (tmp_path / "synthetic").iterdir() if d.name.startswith("syn-")]
    assert len(cells) == 4 and all((d / "DONE").exists() for d in cells)
    md = (results / "tables.md").read_text()
    assert "## MFR" in md and "synthetic, k 4, 2x, 2 SAEs, MFR 3 (symmetric_max) | 2 |" in md
    headline = (results / "headline.txt").read_text()
    assert "MFR vs baseline, synthetic, k 4, 2x, 2 SAEs, MFR 3" in headline
    assert "MMCS to truth" in headline and "MSE" in headline
    assert "layer" not in headline  # no Pareto comparison of TopK cells over λ
    assert (results / "mfr.csv").read_text().count("\n") == 3  # header + 2 configurations
    assert list((tmp_path / "synthetic" / "_truth").glob("*.npy"))
