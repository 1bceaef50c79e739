"""Multi-dimensional feature indices (Engels et al. 2024) on planted shapes."""

import math

import numpy as np
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
