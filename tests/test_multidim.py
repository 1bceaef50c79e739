"""Multi-dimensional feature indices (Engels et al. 2024) on planted shapes."""

import math

import numpy as np
import pytest
import torch

from e2e.analysis import multidim


def _circle(n=600, seed=0):
    t = np.random.default_rng(seed).uniform(0, 2 * math.pi, n)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _two_lines(n=1000, share=0.7, seed=0):
    """A mixture of two 1-D features: `share` of the points on one line, the rest on another."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.2, 1, n)
    on_first = rng.uniform(size=n) < share
    pts = np.where(on_first[:, None], np.outer(t, [0.6, 0.8]), np.outer(t, [-0.8, 0.6]))
    return pts + 1e-4 * rng.normal(size=(n, 2))


def test_mixture_index_finds_the_share_of_points_on_a_line_and_is_low_on_a_circle():
    assert abs(multidim.mixture_index(_two_lines(share=0.7), steps=800) - 0.7) < 0.05
    assert multidim.mixture_index(_circle(), steps=800) < 0.3


def test_separability_is_near_zero_for_independent_data_and_high_for_a_circle():
    rng = np.random.default_rng(1)
    uniform = rng.uniform(-1, 1, size=(5000, 2))
    assert multidim.separability_index(uniform) < 0.05
    assert multidim.separability_index(_circle(5000)) > 0.5


def test_clusters_group_planted_directions_and_the_circle_cluster_ranks_first():
    rng = np.random.default_rng(2)
    d = 16
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    # two planted groups of 6 directions: a cone around basis[:, 2] whose offsets turn in the
    # plane of basis[:, 0:2] (a circular feature), and a bundle near basis[:, 5]
    plane = [basis[:, 2] + 0.8 * (np.cos(a) * basis[:, 0] + np.sin(a) * basis[:, 1])
             for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)]
    ray = [basis[:, 5] + 0.05 * rng.normal(size=d) for _ in range(6)]
    dirs = torch.nn.functional.normalize(torch.tensor(np.array(plane + ray).T), dim=0)
    labels = multidim.spectral_clusters(dirs, n_clusters=2)
    assert len(set(labels[:6])) == 1 and len(set(labels[6:])) == 1 and labels[0] != labels[6]
    graph = multidim.graph_clusters(dirs, k=2, cutoff=0.4)
    assert len(set(graph[6:])) == 1 and graph[6] not in set(graph[:6])
    circle = np.outer(_circle(800)[:, 0], basis[:, 0]) + np.outer(_circle(800)[:, 1],
                                                                   basis[:, 1])
    two = _two_lines(800, share=0.6) @ basis[:, 5:7].T  # a reducible cluster: two 1-D features
    ci = multidim.cluster_indices(circle + 1e-3 * rng.normal(size=circle.shape), steps=500)
    mi = multidim.cluster_indices(two + 1e-3 * rng.normal(size=two.shape), steps=500)
    assert ci["mixture"] < 0.3 < mi["mixture"] and ci["score"] > mi["score"]


def test_lines_fitted_in_one_batch_give_each_sets_own_index():
    """Issue 20, item 6: all pairs of all clusters fitted as one batch, in float32, padded and
    split into chunks; each set's index equals its own fit and the float64 reference."""
    sets = [_two_lines(n, share, seed) for n, share, seed in
            [(40, 0.9, 1), (1000, 0.7, 2), (300, 0.5, 3), (2500, 0.8, 4)]] + [_circle(700, 5)]
    alone = [multidim.mixture_index(x, steps=600) for x in sets]
    batched = multidim.mixture_indices(sets, steps=600)
    chunked = multidim.mixture_indices(sets, steps=600, chunk_points=2600)  # several chunks
    # The two-line sets have one best line: padding moves their index by a point or so. The
    # circle has a circle of them (any direction fits alike), so rounding alone picks where
    # Adam ends: on one machine alone 0.219, batched 0.230, chunked 0.211, float64 0.209
    # (2026-12-07, main at ba93228 too): it is held to its own, wider band.
    assert np.allclose(batched[:4], chunked[:4], atol=0.005)
    assert np.allclose(batched[:4], alone[:4], atol=0.005)
    for x, m, a, c in zip(sets, batched, alone, chunked, strict=True):
        tol = 0.01 if x is not sets[-1] else 0.03
        assert max(abs(v - _mixture_index_float64(x, steps=600)) for v in (m, a, c)) <= tol


def _mixture_index_float64(x, eps=0.1, steps=2000, lr=0.1, seed=0):
    """The definition, one set at a time in float64 (the implementation before the batch)."""
    pts = torch.as_tensor(x, dtype=torch.float64)
    a = torch.randn(2, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64).requires_grad_()
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=lr)

    def z():
        y = pts @ a + b
        return y / y.pow(2).mean().sqrt().clamp_min(1e-12)

    for step in range(steps):
        loss = -torch.sigmoid((eps - z().abs()) / 10 ** (-2 * step / (steps - 1))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float((z().abs() < eps).double().mean())


def test_separability_equals_the_minimum_over_numpys_rotated_histograms():
    x = _two_lines(3000, 0.6, 7) + 0.01 * np.random.default_rng(8).normal(size=(3000, 2))
    want = math.inf
    for theta in np.linspace(0, 2 * math.pi, 100):
        c, s = math.cos(theta), math.sin(theta)
        joint, _, _ = np.histogram2d(*(x @ np.array([[c, -s], [s, c]])).T, bins=10)
        p = joint / joint.sum()
        px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
        nz = p > 0
        want = min(want, float((p[nz] * np.log(p[nz] / (px @ py)[nz] + 1e-10)).sum()
                               / math.log(2)))
    assert multidim.separability_index(x) == pytest.approx(want, abs=1e-9)


def test_codes_are_zero_where_the_dictionary_never_acts_a_masked_position_mid_row(
        smoke_cells, smoke_model):
    """The analysis's points (`jobs.analysis.multidim.kept_codes`): position 0 and every
    excluded token mid-row code nothing; the other positions are the SAE's codes of the hooked
    forward's residual."""
    from dataclasses import replace

    from e2e.sae import SAE
    from jobs.analysis.multidim import kept_codes

    cfg = smoke_cells[0]
    torch.manual_seed(0)
    tokens = torch.randint(1, smoke_model.cfg.d_vocab, (3, 16))
    tokens[1, 7] = tokens[2, 3] = 0  # EOS mid-row
    tokens[0, 9] = 5
    cfg = replace(cfg, data=replace(cfg.data, skip_positions=1, exclude_tokens="special,5"))
    sae = SAE(smoke_model.cfg.d_model, 64)
    with torch.no_grad():
        sae.encoder.bias.fill_(10.0)  # every latent fires everywhere the SAE acts
        _, cache = smoke_model.run_with_cache(tokens, names_filter=cfg.hook_name)
        want = sae.encode(cache[cfg.hook_name])
    got = kept_codes(smoke_model, sae, cfg, tokens)
    masked = torch.zeros_like(tokens, dtype=torch.bool)
    masked[:, 0] = masked[1, 7] = masked[2, 3] = masked[0, 9] = True
    assert (got[masked] == 0).all() and (want[masked] != 0).any(-1).all()
    torch.testing.assert_close(got[~masked], want[~masked], atol=1e-5, rtol=1e-5)
