import math

import pytest
import torch

from e2e.config import LossConfig
from e2e.losses import (
    clean_target,
    downstream_mse,
    kl_orig_sae,
    loss_coeffs,
    mse_loss,
    setting_loss,
    sparsity_loss,
)


def test_sparsity_is_lp_over_units_mean_over_tokens_divided_by_d_in():
    c = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 4.0]])
    assert sparsity_loss(c, p=1, d_in=4).item() == pytest.approx(((3 + 7) / 2) / 4)
    assert sparsity_loss(c, p=2, d_in=4).item() == pytest.approx(((5**0.5 + 5) / 2) / 4)


def test_mse_is_per_element():
    assert mse_loss(torch.zeros(2, 2), torch.tensor([[1.0, 2.0], [0.0, 1.0]])).item() == 1.5


def test_kl_direction_is_orig_to_sae():
    p_orig = torch.tensor([[0.9, 0.1]])
    p_sae = torch.tensor([[0.5, 0.5]])
    want = sum(p * math.log(p / q) for p, q in zip([0.9, 0.1], [0.5, 0.5], strict=True))
    reverse = sum(q * math.log(q / p) for p, q in zip([0.9, 0.1], [0.5, 0.5], strict=True))
    got = kl_orig_sae(p_orig.log(), p_sae.log()).item()
    assert got == pytest.approx(want, rel=1e-5)
    assert abs(got - reverse) > 0.05  # the two directions differ here: the test can tell


def test_kl_is_mean_over_tokens_of_sum_over_vocab():
    lo = torch.randn(2, 3, 5)
    ls = torch.randn(2, 3, 5)
    per_token = (lo.softmax(-1) * (lo.log_softmax(-1) - ls.log_softmax(-1))).sum(-1)
    assert kl_orig_sae(lo, ls).item() == pytest.approx(per_token.mean().item(), rel=1e-5)


def test_kl_from_shared_clean_target_has_the_plain_formulas_value_and_gradient():
    torch.manual_seed(0)
    lo = torch.randn(3, 4, 7, dtype=torch.float64).float()
    ls = torch.randn(3, 4, 7, requires_grad=True)
    plain = (lo.softmax(-1) * (lo.log_softmax(-1) - ls.log_softmax(-1))).sum(-1).mean()
    (g_plain,) = torch.autograd.grad(plain, ls)
    fused = kl_orig_sae(clean_target(lo), ls)
    (g_fused,) = torch.autograd.grad(fused, ls)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.allclose(g_fused, g_plain, atol=1e-7)
    assert kl_orig_sae(clean_target(lo), lo).item() == pytest.approx(0, abs=1e-6)


def test_downstream_weights_total_over_positions():
    a = [torch.zeros(3), torch.zeros(3)]
    b = [torch.ones(3), 2 * torch.ones(3)]
    assert downstream_mse(a, b, 2.5).item() == pytest.approx(2.5 / 2 * (1 + 4))


def test_paper_coefficients_per_setting():
    c = loss_coeffs(LossConfig(setting="local", sparsity_coeff=4), 6, 12)
    assert (c.local_mse, c.kl, c.downstream, c.sparsity) == (1.0, 0.0, 0.0, 4)
    c = loss_coeffs(LossConfig(setting="e2e", sparsity_coeff=1.5), 6, 12)
    assert (c.local_mse, c.kl, c.downstream) == (0.0, 1.0, 0.0)
    assert loss_coeffs(LossConfig(setting="e2e_ds"), 6, 12).downstream == 2.5
    assert loss_coeffs(LossConfig(setting="e2e_ds"), 10, 12).downstream == 0.05
    assert loss_coeffs(LossConfig(setting="e2e_ds"), 10, 12).kl == 0.5
    assert loss_coeffs(LossConfig(setting="e2e_ds", kl_coeff=0.7), 2, 12).kl == 0.7


def test_setting_loss_sums_weighted_terms():
    x = torch.zeros(1, 2, 4)
    x_hat = torch.ones(1, 2, 4)
    c = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
    coeffs = loss_coeffs(LossConfig(setting="local", sparsity_coeff=3.0), 0, 2)
    total, terms = setting_loss(coeffs, p=1.0, x=x, x_hat=x_hat, c=c)
    assert terms["sparsity"].item() == pytest.approx(2 / 4)
    assert terms["local_mse"].item() == 1.0
    assert total.item() == pytest.approx(1.0 + 3.0 * 0.5)
