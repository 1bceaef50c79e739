import json

import torch

from e2e.sae import SAE
from e2e.saelens import load_saelens, save_saelens


def test_dictionary_elements_are_unit_norm_and_decoder_orthogonal():
    torch.manual_seed(0)
    sae = SAE(8, 32)
    assert torch.allclose(sae.dict_elements.norm(dim=0), torch.ones(32), atol=1e-6)
    w = sae.decoder.weight  # (d_in, n_dict): rows orthonormal
    assert torch.allclose(w @ w.T, torch.eye(8), atol=1e-5)
    with torch.no_grad():
        sae.decoder.weight.mul_(3.0)  # raw weights unconstrained; the forward renormalises
    x = torch.randn(5, 8)
    x_hat, c = sae(x)
    want = torch.relu(x @ sae.encoder.weight.T + sae.encoder.bias) @ sae.dict_elements.T
    assert torch.allclose(x_hat, want + sae.decoder.bias, atol=1e-5)
    assert (c >= 0).all() and c.shape == (5, 32)


def test_saelens_format_round_trip(tmp_path):
    torch.manual_seed(0)
    sae = SAE(8, 16)
    save_saelens(sae, tmp_path, {"hook_name": "blocks.1.hook_resid_pre", "hook_layer": 1})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"], cfg["architecture"]) == (8, 16, "standard")
    from safetensors.torch import load_file

    t = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert t["W_enc"].shape == (8, 16) and t["W_dec"].shape == (16, 8)
    assert torch.allclose(t["W_dec"].norm(dim=1), torch.ones(16), atol=1e-6)
    loaded, _ = load_saelens(tmp_path)
    x = torch.randn(4, 8)
    assert torch.allclose(loaded(x)[0], sae(x)[0], atol=1e-6)


def test_unit_norm_columns_has_normalizes_value_and_gradient():
    from e2e.sae import unit_norm_columns

    torch.manual_seed(0)
    w = (torch.randn(6, 9) * torch.rand(9) * 5).requires_grad_()
    g = torch.randn(6, 9)
    want = torch.nn.functional.normalize(w, dim=0)
    (g_want,) = torch.autograd.grad(want, w, g)
    got = unit_norm_columns(w)
    (g_got,) = torch.autograd.grad(got, w, g)
    assert torch.allclose(got, want, atol=1e-7)
    assert torch.allclose(g_got, g_want, atol=1e-6)
    assert torch.autograd.gradcheck(unit_norm_columns, (w.detach().double().requires_grad_(),))


def test_topk_keeps_the_k_largest_preactivations_relud_and_saves_as_saelens_topk(tmp_path):
    torch.manual_seed(0)
    sae = SAE(8, 16, k=3)
    x = torch.randn(5, 8)
    _, c = sae(x)
    pre = x @ sae.encoder.weight.T + sae.encoder.bias
    # SAELens's TopK: the top-k values of the pre-activation, ReLU'd, scattered; zero elsewhere
    top = pre.topk(3, dim=-1)
    want = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    assert torch.equal(c, want)
    assert ((c > 0).sum(-1) <= 3).all() and (c >= 0).all()
    save_saelens(sae, tmp_path, {})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["k"]) == ("topk", 3)
    loaded, _ = load_saelens(tmp_path)
    assert loaded.k == 3 and torch.allclose(loaded(x)[0], sae(x)[0], atol=1e-6)
