import math

import pytest
import torch

from e2e.metrics import AliveTracker, ce_loss, explained_variance, l0


def test_ce_loss_is_next_token_mean_over_batch_and_pos_minus_one():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3)  # p(token 2 | pos 0) = 3/6
    tokens = torch.tensor([[0, 2, 1]])
    want = (-math.log(3 / 6) - math.log(1 / 4)) / 2
    assert ce_loss(logits, tokens).item() == pytest.approx(want)


def test_explained_variance_per_token_definition():
    target = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert explained_variance(target, target).item() == 1.0
    assert explained_variance(torch.zeros_like(target), target).item() == pytest.approx(0.0)
    half = explained_variance(target / 2, target).item()
    assert half == pytest.approx(0.75)


def test_the_two_explained_variances_against_a_from_scratch_computation():
    """A planted batch: one token sits 1e-3 from the batch mean, so its own ratio explodes in
    the per-token (paper) mean while the pooled (SAELens, SAEBench) ratio barely moves."""
    from e2e.metrics import explained_variance_pooled

    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 4, generator=g)
    x = torch.cat([x, x.mean(0, keepdim=True) + 1e-3])  # a 10th token next to the mean
    x_hat = x + 0.1 * torch.randn(10, 4, generator=g)
    mean = x.mean(0)
    per_token = [1 - ((x[i] - x_hat[i]) ** 2).sum() / ((x[i] - mean) ** 2).sum()
                 for i in range(10)]
    pooled = 1 - ((x - x_hat) ** 2).sum() / ((x - mean) ** 2).sum()
    assert explained_variance(x_hat, x).item() == pytest.approx(float(sum(per_token) / 10),
                                                                rel=1e-5)
    assert explained_variance_pooled(x_hat, x).item() == pytest.approx(float(pooled), rel=1e-6)
    assert explained_variance(x_hat, x).item() < -100 < 0.9 < explained_variance_pooled(x_hat, x)


def test_l0_counts_nonzero_per_token():
    c = torch.tensor([[[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]]])
    assert l0(c).item() == 1.5


def test_alive_reports_last_complete_window():
    t = AliveTracker(n_dict=4, window_tokens=4)
    t.update(torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0]]]))  # 2 tokens: partial window
    assert t.alive == 2
    t.update(torch.tensor([[[0, 0, 1.0, 0], [0, 0, 0, 0]]]))  # window of 4 complete: 3 fired
    assert t.alive == 3
    t.update(torch.tensor([[[1.0, 0, 0, 0]]]))  # new partial window does not replace it
    assert t.alive == 3
    signed = AliveTracker(n_dict=3, window_tokens=2)  # a signed code fires too (DB-KSVD's)
    signed.update(torch.tensor([[-0.5, 0, 0], [0, 0, 2.0]]))
    assert signed.alive == 2


def test_l2_ratio_of_an_identity_sae_is_one_and_of_a_halving_sae_one_half():
    from e2e.metrics import l2_ratios
    from e2e.sae import SAE

    d = 6
    sae = SAE(d, 2 * d)  # c = [relu(x), relu(-x)], x_hat = relu(x) - relu(-x) = x
    eye = torch.eye(d)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.cat([eye, -eye]))
        sae.encoder.bias.zero_()
        sae.decoder.weight.copy_(torch.cat([eye, -eye], 1))
        sae.decoder.bias.zero_()
    x = torch.randn(3, 5, d)
    x[:, 0] *= 100  # position 0 apart, as GPT-2's large first-token norm
    with torch.no_grad():
        x_hat, _ = sae(x)
    r = l2_ratios(x_hat, x)
    assert float(r["l2_ratio/pos0"]) == pytest.approx(1.0, abs=1e-5)
    assert float(r["l2_ratio/pos_gt0"]) == pytest.approx(1.0, abs=1e-5)
    r = l2_ratios(torch.cat([x[:, :1], 0.5 * x[:, 1:]], 1), x)
    assert float(r["l2_ratio/pos0"]) == pytest.approx(1.0)
    assert float(r["l2_ratio/pos_gt0"]) == pytest.approx(0.5)


@pytest.mark.parametrize("cap", [0.0, 3.0])
def test_logit_metrics_in_chunks_equal_the_full_logits_definitions(monkeypatch, cap):
    """The eval's CE, KL and top-1 agreement, unembedded a chunk of tokens at a time (ragged
    chunks here), against ce_loss and the plain KL on the full logits."""
    import e2e.metrics
    from e2e.kernels import CleanTarget
    from e2e.losses import kl_orig_sae
    from e2e.metrics import logit_metrics

    monkeypatch.setattr(e2e.metrics, "kl_chunk_tokens", lambda device, vocab: 7)
    torch.manual_seed(0)
    b, t, d, vocab = 3, 10, 8, 50
    w, bias = torch.randn(vocab, d), torch.randn(vocab)
    x_clean, x_sae = torch.randn(b, t, d), torch.randn(b, t, d)
    tokens = torch.randint(0, vocab, (b, t))
    target = CleanTarget(x_clean.reshape(-1, d), w, bias, cap)
    z_p, z_q = target.logits(x_clean), target.logits(x_sae)
    if cap:
        assert z_p.abs().max() < cap
    got = logit_metrics(target, x_sae, tokens)
    want = {"ce_loss_orig": ce_loss(z_p, tokens), "ce_loss_sae": ce_loss(z_q, tokens),
            "kl_orig_sae": kl_orig_sae(z_p, z_q),
            "top1_agreement": (z_p.argmax(-1) == z_q.argmax(-1)).float().mean()}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].item() == pytest.approx(want[k].item(), rel=1e-6), k
