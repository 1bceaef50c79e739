import math

import pytest
import torch

import e2e.kernels.kl
from e2e.config import LossConfig
from e2e.kernels import CleanTarget
from e2e.losses import (
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


@pytest.mark.parametrize("cap", [0.0, 3.0])
@pytest.mark.parametrize("chunk", [256, 7])  # one chunk; chunks of 7 tokens, the last ragged
def test_fused_unembedding_kl_has_the_from_scratch_value_and_gradient(monkeypatch, cap, chunk):
    """The training step's KL (unembedding fused in, chunked, gradient in the forward) against
    the textbook formula in float64 through autograd, with and without Gemma 2's soft cap."""
    monkeypatch.setattr(e2e.kernels.kl, "kl_chunk_tokens", lambda device, vocab: chunk)
    torch.manual_seed(0)
    n, d, vocab = 2 * 15, 6, 11
    w, b = torch.randn(vocab, d), torch.randn(vocab)
    x_clean = torch.randn(n, d)
    x_sae = (x_clean + 0.5 * torch.randn(n, d)).reshape(2, 15, d).requires_grad_()

    def logits(x):
        z = x.double() @ w.double().T + b.double()
        return cap * torch.tanh(z / cap) if cap else z

    lp, lq = logits(x_clean).log_softmax(-1), logits(x_sae.reshape(n, d)).log_softmax(-1)
    plain = (lp.exp() * (lp - lq)).sum(-1).mean()
    (g_plain,) = torch.autograd.grad(3 * plain, x_sae)
    fused = kl_orig_sae(CleanTarget(x_clean, w, b, cap), x_sae)
    (g_fused,) = torch.autograd.grad(3 * fused, x_sae)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.allclose(g_fused, g_plain, rtol=1e-4, atol=1e-7)
    assert kl_orig_sae(CleanTarget(x_clean, w, None), x_clean).item() == pytest.approx(
        0, abs=1e-6)
    with torch.no_grad():  # the evaluation's form: same value, no gradient computed
        assert kl_orig_sae(CleanTarget(x_clean, w, b, cap), x_sae).item() == pytest.approx(
            plain.item(), rel=1e-5)


def test_fused_kl_runs_eagerly_where_compiling_fails(monkeypatch):
    """A container without a C++ compiler: one warning, then the same function eagerly."""
    def broken(*args):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    monkeypatch.setattr(e2e.kernels.kl._kl_core, "fn", broken)
    torch.manual_seed(0)
    w, x = torch.randn(11, 6), torch.randn(5, 6)
    y = (x + 0.5).requires_grad_()
    with pytest.warns(UserWarning, match="running it eagerly"):
        kl = kl_orig_sae(CleanTarget(x, w, None), y)
    lp, lq = (x @ w.T).log_softmax(-1), (y @ w.T).log_softmax(-1)
    assert kl.item() == pytest.approx((lp.exp() * (lp - lq)).sum(-1).mean().item(), rel=1e-5)
    assert e2e.kernels.kl._kl_core.fn is e2e.kernels.kl._kl_chunk


def test_fused_kl_under_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(0)
    n, d, vocab = 64, 32, 500
    w, b = torch.randn(vocab, d) / d**0.5, torch.randn(vocab)
    x_clean = torch.randn(n, d)
    x_sae = (x_clean + 0.3 * torch.randn(n, d)).requires_grad_()
    target = CleanTarget(x_clean, w, b)
    ref = kl_orig_sae(target, x_sae)
    (g_ref,) = torch.autograd.grad(ref, x_sae)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = kl_orig_sae(target, x_sae)
    (g_low,) = torch.autograd.grad(low, x_sae)
    assert low.dtype == torch.float32 and g_low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=0.05)
    assert float((g_low - g_ref).norm() / g_ref.norm()) < 0.05


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
