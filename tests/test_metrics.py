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
