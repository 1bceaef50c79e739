"""DB-KSVD: the coders, the dictionary update, planted recovery, resume and cell outputs."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from e2e import ksvd
from e2e.config import (
    CellConfig,
    ConfigError,
    EvalConfig,
    KSVDConfig,
    LossConfig,
    SAEConfig,
    SyntheticConfig,
    normalized,
)
from e2e.io import cell_paths
from e2e.metrics import l0
from e2e.saelens import load_saelens, save_saelens
from e2e.store import read_metrics
from e2e.train import train
from jobs.plan.grid import cell_id
from jobs.plan.make import make_plan


def _sparse_codes(n: int, k: int, s: int, g: torch.Generator) -> torch.Tensor:
    x = torch.zeros(n, k)
    atoms = torch.rand(n, k, generator=g).argsort(1)[:, :s]
    signs = torch.where(torch.rand(n, s, generator=g) < 0.5, -1.0, 1.0)
    return x.scatter_(1, atoms, (1 + torch.rand(n, s, generator=g)) * signs)


@pytest.mark.parametrize("coder,refit", [("mp", False), ("mp", True), ("omp", True)])
def test_pursuit_recovers_an_exactly_sparse_code_of_an_orthonormal_dictionary(coder, refit):
    g = torch.Generator().manual_seed(0)
    d, _ = torch.linalg.qr(torch.randn(24, 24, generator=g))
    x = _sparse_codes(200, 24, 4, g)
    codes = ksvd.sparse_code(x @ d.T, d, max_nnz=4, rtol=1e-6, coder=coder, refit=refit)
    assert torch.allclose(codes.dense(24), x, atol=1e-5)


def test_pursuit_respects_the_budget_and_stops_at_rtol():
    g = torch.Generator().manual_seed(1)
    d = torch.nn.functional.normalize(torch.randn(16, 64, generator=g), dim=0)
    y = torch.randn(300, 16, generator=g)
    for coder in ("mp", "omp"):
        codes = ksvd.sparse_code(y, d, max_nnz=5, coder=coder)
        assert torch.bincount(codes.sample, minlength=300).max() <= 5
    # y = one atom: one step reaches ||r|| / ||y|| < rtol
    one = ksvd.sparse_code(3 * d[:, 7][None], d, max_nnz=5, rtol=0.05)
    assert one.atom.tolist() == [7] and one.value.item() == pytest.approx(3.0, abs=1e-5)


def test_the_rank1_update_lowers_the_objective_and_is_the_top_singular_pair():
    g = torch.Generator().manual_seed(2)
    d = torch.nn.functional.normalize(torch.randn(16, 48, generator=g), dim=0)
    y = torch.randn(500, 16, generator=g)
    codes = ksvd.sparse_code(y, d, max_nnz=4)
    before = ksvd.objective(y, d, codes)
    for iters in (1, 3):
        d2, c2 = ksvd.update_dictionary(y, d, codes, atom_chunk=8,
                                        generator=torch.Generator().manual_seed(0),
                                        power_iters=iters)
        assert ksvd.objective(y, d2, c2) < before
        assert torch.allclose(torch.linalg.vector_norm(d2, dim=0), torch.ones(48), atol=1e-5)
    # the samples of one atom alone, many power steps: E = Y on them, and the new atom and
    # coefficients are E's top singular pair (u1, sigma1 v1)
    k = int(codes.atom[0])
    uses = codes.atom == k
    only_k = ksvd.Codes(codes.sample[uses], codes.atom[uses], codes.value[uses], codes.n)
    d2, c2 = ksvd.update_dictionary(y, d, only_k, atom_chunk=4,
                                    generator=torch.Generator().manual_seed(0), power_iters=200)
    u, s, vt = torch.linalg.svd(y[only_k.sample].T, full_matrices=False)
    assert abs(float(u[:, 0] @ d2[:, k])) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(c2.value.abs(), s[0] * vt[0].abs(), atol=1e-4)
    assert float(c2.value.sum()) >= 0  # the sign: the atom points the way it is used


def test_an_unused_atom_becomes_the_worst_reconstructed_samples_residual():
    """Issue 20, item 7: a dead atom is replaced from the data, not by a random vector (which
    the next pursuit leaves unused, so it stays dead)."""
    g = torch.Generator().manual_seed(3)
    d = torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=0)
    y = torch.randn(400, 16, generator=g)
    y[17] *= 10  # the worst-reconstructed sample, by far
    codes = ksvd.sparse_code(y, d, max_nnz=3)
    keep = (codes.atom != 5) & (codes.atom != 9)  # atoms 5 and 9 unused
    codes = ksvd.Codes(codes.sample[keep], codes.atom[keep], codes.value[keep], codes.n)
    d2, _ = ksvd.update_dictionary(y, d, codes, atom_chunk=32,  # one chunk: r is the start's
                                   generator=torch.Generator().manual_seed(0))
    r = ksvd.residual(y, d, codes)
    worst = torch.linalg.vector_norm(r, dim=1).argsort(descending=True)[:2]
    assert int(worst[0]) == 17
    got = {5: d2[:, 5], 9: d2[:, 9]}
    want = torch.nn.functional.normalize(r[worst], dim=1)
    # the two unused atoms take the two worst samples' residual directions, one each
    cos = torch.stack([torch.stack([got[a] @ w for w in want]) for a in (5, 9)]).abs()
    assert sorted(cos.max(1).values.tolist()) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert cos.argmax(1).unique().numel() == 2
    # chunk after chunk, the samples are taken in order (none is skipped between chunks)
    from e2e.ksvd.update import _replacements
    r = torch.eye(6, 4) * torch.arange(6, 0, -1)[:, None]  # rows 0-3 non-zero, 4-5 zero
    worst = iter(range(6))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(_replacements(r, worst, 2, g), torch.eye(4)[:2])
    assert torch.equal(_replacements(r, worst, 2, g), torch.eye(4)[2:])
    assert next(worst) == 4
    # and the next pursuit uses the atom that took sample 17's residual
    again = ksvd.sparse_code(y, d2, max_nnz=3)
    took_17 = (5, 9)[int(cos[:, 0].argmax())]
    assert bool(((again.sample == 17) & (again.atom == took_17)).any())


def _synthetic_ksvd(**ksvd_fields) -> CellConfig:
    """DB-KSVD on the MFR generator: 128 planted features in 64 dimensions, 8 active."""
    return CellConfig(
        source="synthetic",
        synthetic=SyntheticConfig(d=64, n_features=128, n_groups=1, group_size=128, active=8,
                                  decay=1.0),
        sae=SAEConfig(dict_size_to_input_ratio=2.0),
        loss=LossConfig(setting="ksvd", sparsity_coeff=0.0),
        ksvd=KSVDConfig(**{"max_nnz": 8, "n_tokens": 16_384, "batch_size": 16_384,
                           "n_passes": 30, "atom_chunk": 16, **ksvd_fields}),
        eval=EvalConfig(n_samples=2048, batch_size=1024, alive_window_tokens=16_384,
                        alive_pass_tokens=2048),
        device="cpu")


def test_ksvd_recovers_planted_features(tmp_path):
    cfg = _synthetic_ksvd()
    assert train(cfg, tmp_path, progress=False) == "done"
    ev = read_metrics(cell_paths(tmp_path).metrics)["eval"]
    assert ev["recovered_true"] >= 0.9  # measured 0.95
    assert ev["l0"] <= 8
    assert not (tmp_path / "activations.npy").exists()  # the cache goes once done


def test_ksvd_interrupted_at_any_batch_resumes_bit_identical(tmp_path):
    cfg = _synthetic_ksvd(n_tokens=4096, batch_size=1024, n_passes=2)
    train(cfg, tmp_path / "straight", progress=False)
    for stop_at in (0, 3, 6):
        out = tmp_path / f"resumed{stop_at}"
        polls = iter(range(1000))
        status = train(cfg, out, progress=False,
                       should_stop=lambda n=stop_at, it=polls: next(it) == n)
        assert status == "interrupted"
        assert train(cfg, out, progress=False) == "done"
        a = load_file(str(cell_paths(tmp_path / "straight").sae / "sae_weights.safetensors"))
        b = load_file(str(cell_paths(out).sae / "sae_weights.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)
        ma = read_metrics(cell_paths(tmp_path / "straight").metrics)
        mb = read_metrics(cell_paths(out).metrics)
        for k in ma["train"]:
            assert np.array_equal(ma["train"][k], mb["train"][k]), k


def test_a_ksvd_cell_on_the_model_is_scored_like_every_cell(smoke_cells, tmp_path):
    (cfg,) = [c for c in smoke_cells if c.loss.setting == "ksvd"]
    cfg = replace(cfg, ksvd=replace(cfg.ksvd, keep_activations=True))
    assert train(cfg, tmp_path, progress=False) == "done"
    p = cell_paths(tmp_path)
    m = read_metrics(p.metrics)
    for k in ("ce_loss_increase", "kl_orig_sae", "l0", "alive_dict_elements",
              f"explained_variance/{cfg.hook_name}", "l2_ratio/pos0",
              "mse/blocks.2.hook_resid_pre"):
        assert k in m["eval"] and np.isfinite(m["eval"][k]), k
    assert 0 < m["eval"]["l0"] <= cfg.ksvd.max_nnz
    assert m["alive_mask"].shape == (1, 4 * 32)
    acts = np.load(tmp_path / "activations.npy")  # the hook's activations, every position
    assert acts.shape == (cfg.ksvd.n_tokens, 32)
    # the saved dictionary loads as a model with the same encoder
    model, saved = load_saelens(p.sae)
    assert saved["architecture"] == "ksvd" and saved["max_nnz"] == cfg.ksvd.max_nnz
    x = torch.from_numpy(acts[:256])
    x_hat, c = model(x)
    assert float(l0(c)) <= cfg.ksvd.max_nnz and (c < 0).any()  # signed codes count in L0
    assert torch.allclose(model.b_dec, torch.from_numpy(acts.mean(0)), atol=1e-4)
    assert torch.allclose(x_hat, c @ model.D.T + model.b_dec, atol=1e-5)


def test_ksvd_fits_only_the_kept_positions_separators_mid_row_left_out(smoke_cells, tmp_path):
    """`data.skip_positions=1`, `data.exclude_tokens=special,<the commonest token>` (the smoke
    LM's EOS after every document is rare in its rows): the cached activations are the
    training stream's residuals at the kept positions, row by row, as TransformerLens's own
    hooked forward gives them."""
    from e2e.data.tokens import TokenStream
    from e2e.model import load_model
    from e2e.model.positions import special_ids

    (cfg,) = [c for c in smoke_cells if c.loss.setting == "ksvd"]
    model = load_model(cfg.model)
    common = int(TokenStream(cfg.data, model.tokenizer, cfg.seed, cfg.data.split).next_batch(
        cfg.eval.batch_size)[:, 1:].flatten().mode().values)
    cfg = replace(cfg, ksvd=replace(cfg.ksvd, keep_activations=True, n_tokens=700),
                  data=replace(cfg.data, skip_positions=1, exclude_tokens=f"special,{common}"))
    assert train(cfg, tmp_path, progress=False) == "done"
    acts = np.load(tmp_path / "activations.npy")
    ids = torch.tensor([*special_ids(model.tokenizer), common])
    stream = TokenStream(cfg.data, model.tokenizer, cfg.seed, cfg.data.split)
    want, seps = [], 0
    while sum(map(len, want)) < len(acts):
        batch = stream.next_batch(cfg.eval.batch_size)
        _, cache = model.run_with_cache(batch, names_filter=cfg.hook_name)
        keep = ~torch.isin(batch, ids)
        keep[:, 0] = False
        seps += int(torch.isin(batch[:, 1:], ids).sum())
        want.append(cache[cfg.hook_name][keep])
    assert seps > 20  # positions mid-row were there to leave out
    want = torch.cat(want)[:len(acts)]
    torch.testing.assert_close(torch.from_numpy(acts), want, atol=1e-3, rtol=1e-3)


def test_bad_ksvd_options_fail_before_submission(tmp_path):
    for tokens, message in (
            (["lambdas.ksvd=[0]"], "ksvd.max_nnz=0"),
            (["lambdas.ksvd=[2.5]"], "whole number"),
            (["lambdas.ksvd=[99999]"], "<= K ="),
            (["sae.dict_size_to_input_ratio=0.001"], "K >= 1"),
            (["ksvd.batch_size=0"], "ksvd.batch_size")):
        with pytest.raises(ConfigError, match=message):
            make_plan(["grid=tiny", f"root={tmp_path}", "dry_run=true", *tokens])
    assert not any(tmp_path.iterdir())


def test_ksvd_options_never_change_an_sae_cells_id():
    sae_cell = CellConfig(loss=LossConfig(setting="local"))
    other = normalized(replace(sae_cell, ksvd=KSVDConfig(n_tokens=1000, max_nnz=3)))
    assert cell_id(normalized(sae_cell)) == cell_id(other)
    # a field at its default is not hashed: a new field with a default keeps every id
    assert cell_id(CellConfig()).endswith("-" + __import__("hashlib").sha256(b"{}")
                                          .hexdigest()[:6])


def test_tiny_grid_has_a_ksvd_curve_spanning_the_saes_l0_range(tmp_path):
    plan = make_plan(["grid=tiny", f"root={tmp_path}", "dry_run=true"])
    ksvd_cells = [c for c in plan.cells if c.cfg.loss.setting == "ksvd"]
    assert [c.cfg.ksvd.max_nnz for c in ksvd_cells] == [3, 6, 12, 24]
    assert all(c.id.startswith(f"L2-ksvd-nnz{c.cfg.ksvd.max_nnz}-") for c in ksvd_cells)
    assert all(len(p) == 1 for p in plan.packs if p[0].cfg.loss.setting == "ksvd")


@pytest.mark.parametrize("layer", [2, 6, 10])
def test_paper_grid_fits_ksvd_at_the_papers_dictionary_size(tmp_path, layer):
    plan = make_plan(["grid=paper", f"root={tmp_path}", "dry_run=true", "settings=[ksvd]",
                      f"layers=[{layer}]"])
    assert [c.cfg.ksvd.max_nnz for c in plan.cells] == [16, 32, 64, 128, 256]
    assert all(c.cfg.sae.dict_size_to_input_ratio == 60 for c in plan.cells)


def test_the_dictionary_module_round_trips_through_its_files(tmp_path):
    g = torch.Generator().manual_seed(3)
    d = torch.nn.functional.normalize(torch.randn(8, 20, generator=g), dim=0)
    m = ksvd.KSVDDictionary(d, torch.randn(8, generator=g), max_nnz=3, coder="omp")
    save_saelens(m, Path(tmp_path), {"hook_name": "x"})
    loaded, cfg = load_saelens(tmp_path)
    x = torch.randn(5, 7, 8, generator=g)
    assert torch.equal(loaded(x)[0], m(x)[0]) and cfg["coder"] == "omp"


def test_a_sigkilled_ksvd_cell_resumes_bit_identical_and_leaves_no_stale_cache(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = _synthetic_ksvd(n_tokens=65_536, batch_size=1024, n_passes=3)  # 192 batches
    train(cfg, tmp_path / "straight", progress=False)
    killed = cell_paths(tmp_path / "killed")
    killed.root.mkdir()
    killed.config.write_text(cfg.to_json())
    (killed.root / ".activations.npy.999999.tmp").write_bytes(b"left by a killed caching")
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cell", str(killed.root)],
                            env={**os.environ, "PYTHONPATH": str(repo)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not killed.checkpoint.exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # a few batches further, mid-batch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.done.exists()
    assert train(cfg, killed.root, progress=False) == "done"
    assert not list(killed.root.glob(".activations.npy.*"))
    a = load_file(str(cell_paths(tmp_path / "straight").sae / "sae_weights.safetensors"))
    b = load_file(str(killed.sae / "sae_weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
