"""SAELens folders (issue 20, item 3): other tools' SAEs load with the forward they compute, or
are refused naming the field; ours, and our ksvd dictionaries, load in SAELens itself with the
same forward (in SAELens's own environment, `.venv-saelens`: its transformer-lens pin conflicts
with ours)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAELENS_PY, need
from safetensors.torch import save_file

from e2e import ksvd
from e2e.arch.batchtopk import BatchTopKSAE, MatryoshkaSAE
from e2e.arch.jumprelu import JumpReLUSAE
from e2e.config import CellConfig, DataConfig, ModelConfig
from e2e.model.positions import Positions
from e2e.sae import SAE
from e2e.saelens import cell_meta, load_saelens, save_saelens

REPO = Path(__file__).resolve().parent.parent


def _foreign(path: Path, seed: int = 0, norms=(1.3, 2.2), **cfg) -> dict:
    """A SAELens standard SAE (d_in 8, d_sae 16) as another tool writes it: W_dec rows of norms
    in `norms`, a non-zero b_dec; `cfg` overrides its config fields."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    w_dec = w_dec * torch.empty(16, 1).uniform_(*norms, generator=g)
    t = {"W_enc": torch.randn(8, 16, generator=g), "b_enc": 0.3 * torch.randn(16, generator=g),
         "W_dec": w_dec, "b_dec": torch.randn(8, generator=g)}
    path.mkdir(parents=True)
    save_file(t, str(path / "sae_weights.safetensors"))
    full = {"architecture": "standard", "d_in": 8, "d_sae": 16, "dtype": "float32",
            "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
            "hook_name": "blocks.1.hook_resid_pre", **cfg}
    (path / "cfg.json").write_text(json.dumps(full))
    return t


def _x(n: int = 64, seed: int = 1) -> torch.Tensor:
    return 2 * torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))


def _relu_forward(t: dict, x: torch.Tensor, b_dec_in: bool) -> torch.Tensor:
    pre = (x - t["b_dec"] * b_dec_in) @ t["W_enc"] + t["b_enc"]
    return torch.relu(pre) @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("b_dec_in", [False, True])
def test_a_standard_sae_with_unnormalised_decoder_rows_runs_its_own_forward(tmp_path, b_dec_in):
    t = _foreign(tmp_path / "s", apply_b_dec_to_input=b_dec_in)
    sae, _ = load_saelens(tmp_path / "s")
    x = _x()
    want = _relu_forward(t, x, b_dec_in)
    assert torch.allclose(sae(x)[0], want, atol=1e-5, rtol=1e-5)
    # the codes are in units of the unit-norm elements (SAELens's fold_W_dec_norm)
    codes = torch.relu((x - t["b_dec"] * b_dec_in) @ t["W_enc"] + t["b_enc"])
    norms = torch.linalg.vector_norm(t["W_dec"], dim=1)
    assert torch.allclose(sae.encode(x), codes * norms, atol=1e-5, rtol=1e-5)


def test_a_pre_6_topk_config_loads_as_topk(tmp_path):
    t = _foreign(tmp_path / "s", norms=(1.0, 1.0), activation_fn_str="topk",
                 activation_fn_kwargs={"k": 2})
    sae, _ = load_saelens(tmp_path / "s")
    x = _x()
    c = sae.encode(x)
    assert sae.k == 2 and int((c != 0).sum(-1).max()) == 2
    pre = x @ t["W_enc"] + t["b_enc"]
    top = pre.topk(2, dim=-1)
    want = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
    assert torch.allclose(sae(x)[0], want @ t["W_dec"] + t["b_dec"], atol=1e-5)


def test_topk_rescaled_by_decoder_norm_runs_its_own_forward(tmp_path):
    t = _foreign(tmp_path / "s", architecture="topk", k=3, rescale_acts_by_decoder_norm=True)
    sae, _ = load_saelens(tmp_path / "s")
    x = _x()
    norms = torch.linalg.vector_norm(t["W_dec"], dim=1)
    pre = (x @ t["W_enc"] + t["b_enc"]) * norms
    top = pre.topk(3, dim=-1)
    acts = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
    assert torch.allclose(sae(x)[0], (acts / norms) @ t["W_dec"] + t["b_dec"], atol=1e-5)


@pytest.mark.parametrize("fields,named", [
    ({"normalize_activations": "expected_average_only_in"}, "normalize_activations"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations"),
    ({"architecture": "topk", "k": 2}, "rescale_acts_by_decoder_norm"),
    ({"activation_fn_str": "tanh-relu"}, "activation_fn"),
    ({"activation_fn_str": "topk"}, "activation_fn_kwargs.k"),
    ({"reshape_activations": "hook_z"}, "reshape_activations"),
    ({"hook_head_index": 3}, "hook_head_index"),
    ({"finetuning_scaling_factor": True}, "finetuning_scaling_factor"),
    ({"architecture": "gated"}, "architecture"),
    ({"architecture": "jumprelu"}, "no threshold"),  # SAELens's jumprelu needs one
    # found by a review: a head index under SAELens 6's metadata, a topk without k, a pre-6
    # top-level k (SAELens runs that as ReLU), shapes and k that do not fit
    ({"metadata": {"hook_name": "blocks.0.attn.hook_z", "hook_head_index": 3}},
     "hook_head_index"),
    ({"architecture": "topk", "rescale_acts_by_decoder_norm": True}, "k None"),
    ({"activation_fn_str": "topk", "k": 3}, "activation_fn_kwargs.k"),
    ({"d_sae": 12}, "d_sae 12"),
    ({"architecture": "topk", "k": "3", "rescale_acts_by_decoder_norm": True}, "k '3'"),
])
def test_a_field_that_changes_the_forward_and_cannot_be_honoured_is_refused_by_name(
        tmp_path, fields, named):
    _foreign(tmp_path / "s", **fields)
    with pytest.raises(ValueError, match=named):
        load_saelens(tmp_path / "s")


def test_our_files_say_how_the_model_was_processed_and_fed():
    meta = cell_meta(CellConfig(), 0)
    assert meta["model_from_pretrained_kwargs"] == {
        "fold_ln": True, "center_writing_weights": True, "center_unembed": True,
        "fold_value_biases": True}
    assert {"context_size", "dataset_path", "hook_name", "model_name"} <= meta.keys()


def _ours(tmp_path: Path) -> list[tuple[Path, torch.nn.Module]]:
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    out = []
    for name, d in [("relu", SAE(8, 16)), ("topk", SAE(8, 16, k=3)),
                    ("ksvd", ksvd.KSVDDictionary(
                        torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=0),
                        0.1 * torch.randn(8, generator=g), max_nnz=3)),
                    ("jumprelu", JumpReLUSAE(8, 16)), ("batchtopk", BatchTopKSAE(8, 16, k=3)),
                    ("matryoshka", MatryoshkaSAE(8, 16, k=3, widths=[4, 8]))]:
        with torch.no_grad():
            for p in d.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            if name == "jumprelu":  # thresholds that gate some codes, one per element
                d.threshold.copy_(torch.rand(16, generator=g))
            if name in ("batchtopk", "matryoshka"):  # as after training: a learned threshold
                d.train_forward(_x(32))
                d.threshold.fill_(0.3)
        save_saelens(d, tmp_path / name, cell_meta(CellConfig(), 0))
        out.append((tmp_path / name, d))
    return out


def _foreign_jumprelu(path: Path) -> dict:
    """A SAELens 6 jumprelu SAE as Gemma Scope's are written: W_dec rows of norms 1.3-2.2, b_dec
    subtracted from the input, per-element thresholds."""
    t = _foreign(path, seed=4, architecture="jumprelu", apply_b_dec_to_input=True,
                 sae_lens_version="6.54.12")
    t["threshold"] = torch.rand(16, generator=torch.Generator().manual_seed(9))
    save_file(t, str(path / "sae_weights.safetensors"))
    return t


def test_a_foreign_jumprelu_with_unnormalised_rows_runs_its_own_forward(tmp_path):
    t = _foreign_jumprelu(tmp_path / "j")
    sae, _ = load_saelens(tmp_path / "j")
    x = _x()
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    acts = torch.relu(pre) * (pre > t["threshold"])
    assert torch.allclose(sae(x)[0], acts @ t["W_dec"] + t["b_dec"], atol=1e-5)


@pytest.mark.parametrize("name,trained_as", [("jumprelu", "jumprelu"),
                                             ("batchtopk", "batchtopk"),
                                             ("matryoshka", "matryoshka_batchtopk")])
def test_the_new_architectures_are_saved_as_saelens_saves_them_for_inference(tmp_path, name,
                                                                             trained_as):
    folder, d = next((p, d) for p, d in _ours(tmp_path) if p.name == name)
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["training_architecture"] == trained_as
    loaded, _ = load_saelens(folder)
    x = _x()
    with torch.no_grad():
        assert torch.allclose(loaded.encode(x), d.encode(x), atol=1e-6)
        if name != "jumprelu":  # one threshold, the learned one, in every element
            assert torch.equal(loaded.threshold, torch.full((16,), 0.3))


def test_saelens_itself_loads_ours_and_foreign_folders_with_the_same_forward(tmp_path):
    need(SAELENS_PY)
    folders = [p for p, _ in _ours(tmp_path)]
    _foreign(tmp_path / "f_norms_bdec", apply_b_dec_to_input=True)
    _foreign(tmp_path / "f_pre6_topk", norms=(1.0, 1.0), activation_fn_str="topk",
             activation_fn_kwargs={"k": 2})
    _foreign(tmp_path / "f_topk_rescale", architecture="topk", k=3,
             rescale_acts_by_decoder_norm=True, sae_lens_version="6.5.0")
    _foreign_jumprelu(tmp_path / "f_jumprelu")
    folders += [tmp_path / n for n in ("f_norms_bdec", "f_pre6_topk", "f_topk_rescale",
                                       "f_jumprelu")]
    x = _x(256)
    np.save(tmp_path / "x.npy", x.numpy())
    r = subprocess.run([str(SAELENS_PY), "tests/saelens_forward.py", str(tmp_path / "x.npy"),
                        str(tmp_path / "out.npz"), *map(str, folders)], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    theirs = np.load(tmp_path / "out.npz")
    for i, folder in enumerate(folders):
        ours, _ = load_saelens(folder)
        with torch.no_grad():
            recon, codes = (t.numpy() for t in ours(x))
        # two torch versions sum the same products in their own orders: a few float32 ulps
        # (1.1e-5 at |13.5| on one machine, 2026-12-07)
        assert np.allclose(recon, theirs[f"forward{i}"], rtol=1e-5, atol=1e-5), folder.name
        same_codes = folder.name in ("relu", "topk", "ksvd", "f_pre6_topk", "f_topk_rescale",
                                     "jumprelu", "batchtopk", "matryoshka")
        if same_codes:  # a standard SAE with W_dec norms folded has codes scaled by them
            assert np.allclose(codes, theirs[f"codes{i}"], rtol=1e-5, atol=1e-5), folder.name


def test_saelens_applies_our_sae_only_where_we_trained_it(tmp_path):
    """Issue 44: a SAELens user who attaches our SAE with the ids our cfg.json records
    (`add_sae(sae, exclude_special_tokens=sae.cfg.metadata.exclude_special_tokens)`) gets the
    clean residual at those ids, mid-row too, and our SAE's output at every position we kept
    (`e2e.model.positions.Positions`). Position 0, which we skip, is a BOS in SAELens's own
    tokenization (`prepend_bos`), one of the ids: here rows start with it or not."""
    need(SAELENS_PY)
    torch.manual_seed(3)
    sae = SAE(8, 16)
    cfg = CellConfig(model=ModelConfig("gpt2"), layer=1,
                     data=DataConfig(skip_positions=1, exclude_tokens="[1,7]"))
    save_saelens(sae, tmp_path / "sae", cell_meta(cfg, 0, exclude=(1, 7)))
    tokens = torch.tensor([[1, 4, 7, 5, 9, 7, 2, 3], [6, 7, 4, 4, 1, 8, 7, 7]])
    np.save(tmp_path / "tokens.npy", tokens.numpy())
    r = subprocess.run([str(SAELENS_PY), "tests/saelens_masked.py", str(tmp_path / "tokens.npy"),
                        str(tmp_path / "out.npz"), str(tmp_path / "sae")], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    theirs = np.load(tmp_path / "out.npz", allow_pickle=True)
    assert theirs["exclude"].tolist() == [1, 7] and theirs["seqpos_slice"].tolist() == [1, None]
    x = torch.from_numpy(theirs["x"])
    kept = Positions(skip=1, exclude=(1, 7)).kept(tokens)
    with torch.no_grad():
        recon, _ = sae(x)
    ours = torch.where(kept[..., None], recon, x)
    # everywhere but position 0 of a row that does not start with an excluded id (SAELens's
    # BOS): there SAELens applies the SAE and we did not train on it
    compared = torch.ones_like(kept)
    compared[:, 0] = torch.isin(tokens[:, 0], torch.tensor([1, 7]))
    got = torch.from_numpy(theirs["out"])
    assert compared.sum() == 15 and torch.allclose(got[compared], ours[compared], atol=1e-5)
    mid_row = ~kept & (torch.arange(8) > 0)
    assert mid_row.sum() >= 5 and torch.equal(got[mid_row], x[mid_row])
    assert not torch.allclose(recon[mid_row], x[mid_row], atol=1e-2)  # the bypass is visible
