"""Multi-dimensional features (Engels et al. 2024, *Not All Language Model Features Are Linear*).

Dictionary directions are clustered; for each cluster, the tokens where any of its elements
fires give points Σ_i a_i d_i (the cluster's part of the reconstruction), reduced by PCA to at
most 5 components. On each consecutive pair of components two indices say whether the cluster
is one irreducible multi-dimensional feature (a circle of weekdays) or a mixture of 1-D ones:

- ε-mixture index M: the largest fraction of points within ε (0.1) of a line after RMS
  normalisation, z = (a·x + b) / RMS(a·x + b); fitted by gradient ascent (Adam, lr 0.1) on the
  surrogate mean σ((ε − |z|) / τ) with τ annealed from 1 to 0.01, the hard fraction reported.
  High M: the points lie on a line (reducible).
- separability index S: the smallest mutual information (bits, 10 × 10 histogram over the data
  range) over 100 rotations of the plane. High S: no rotation makes the two axes independent.

Clusters rank by (1 − M)·S, mean over their pairs with M ≥ 0.01 (as the authors' analysis).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from e2e.analysis.cosine import cosine_blocks

EPS = 0.1
DENSE_AFFINITY_MAX = 8192  # beyond this, spectral clustering uses a sparse k-NN affinity


def _affinity(cos: np.ndarray) -> np.ndarray:
    """1 − arccos(cos)/π: 1 for equal directions, 0 for opposite ones."""
    return 1 - np.arccos(np.clip(cos, -1, 1)) / math.pi


def spectral_clusters(directions: torch.Tensor, n_clusters: int, seed: int = 0,
                      knn: int = 32) -> np.ndarray:
    """Cluster labels of unit-norm columns (d, n) by spectral clustering on the angular
    affinity; dense up to 8,192 directions, else on each direction's `knn` nearest."""
    from scipy import sparse
    from sklearn.cluster import SpectralClustering

    n = directions.shape[1]
    n_clusters = max(1, min(n_clusters, n))
    if n_clusters == 1:
        return np.zeros(n, dtype=int)
    d = directions.double()
    if n <= DENSE_AFFINITY_MAX:
        aff = _affinity((d.T @ d).numpy())
    else:
        rows, cols, vals = [], [], []
        for i, block in cosine_blocks(d):
            block = block.numpy()
            top = np.argpartition(-block, knn, axis=1)[:, :knn]
            rows.append(np.repeat(np.arange(i, i + len(block)), knn))
            cols.append(top.ravel())
            vals.append(_affinity(np.take_along_axis(block, top, 1)).ravel())
        aff = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                        np.concatenate(cols))), shape=(n, n))
        aff = aff.maximum(aff.T)
    return SpectralClustering(n_clusters, affinity="precomputed", random_state=seed,
                              assign_labels="discretize").fit_predict(aff)


def graph_clusters(directions: torch.Tensor, k: int = 2, cutoff: float = 0.5) -> np.ndarray:
    """Connected components of the graph linking each direction to its `k` nearest neighbours
    with cosine above `cutoff`."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    n = directions.shape[1]
    rows, cols = [], []
    for i, block in cosine_blocks(directions, exclude_self=True):
        block = block.numpy()
        kk = min(k, n - 1)
        if kk < 1:
            break
        top = np.argpartition(-block, kk - 1, axis=1)[:, :kk]
        keep = np.take_along_axis(block, top, 1) > cutoff
        rows.append(np.repeat(np.arange(i, i + len(block)), kk)[keep.ravel()])
        cols.append(top.ravel()[keep.ravel()])
    r = np.concatenate(rows) if rows else np.array([], dtype=int)
    c = np.concatenate(cols) if cols else np.array([], dtype=int)
    graph = sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def mixture_index(x: np.ndarray, eps: float = EPS, steps: int = 2000, lr: float = 0.1,
                  seed: int = 0) -> float:
    """Fraction of the points (n, 2) within eps of the best line after RMS normalisation."""
    pts = torch.as_tensor(x, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=lr)

    def z() -> torch.Tensor:
        y = pts @ a + b
        return y / y.pow(2).mean().sqrt().clamp_min(1e-12)

    for step in range(steps):
        tau = 10 ** (-2 * step / max(1, steps - 1))  # 1 -> 0.01
        loss = -torch.sigmoid((eps - z().abs()) / tau).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((z().abs() < eps).double().mean())


def mutual_information(x: np.ndarray, bins: int = 10) -> float:
    """MI (bits) of the two columns of x from a bins × bins histogram over the data range."""
    joint, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=bins)
    p = joint / joint.sum()
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (px @ py)[nz] + 1e-10)).sum() / math.log(2))


def separability_index(x: np.ndarray, n_angles: int = 100, bins: int = 10) -> float:
    """The smallest MI (bits) over `n_angles` rotations of the plane in [0, 2π]."""
    best = math.inf
    for theta in np.linspace(0, 2 * math.pi, n_angles):
        c, s = math.cos(theta), math.sin(theta)
        best = min(best, mutual_information(x @ np.array([[c, -s], [s, c]]), bins))
    return best


def cluster_indices(points: np.ndarray, max_components: int = 5, steps: int = 2000,
                    seed: int = 0) -> dict:
    """PCA of a cluster's reconstruction points (n, d) and M, S on consecutive PC pairs.

    Returns {"pairs": [(M, S), ...], "mixture", "separability", "score", "projection" (n, ≤5),
    "explained_variance_ratio"}; mixture and separability are the means over pairs with
    M ≥ 0.01, and score is the mean of (1 − M)·S over them.
    """
    from sklearn.decomposition import PCA

    n_comp = min(max_components, points.shape[0], points.shape[1])
    pca = PCA(n_components=n_comp, random_state=seed)
    proj = pca.fit_transform(points)
    pairs = [(mixture_index(proj[:, i:i + 2], steps=steps, seed=seed),
              separability_index(proj[:, i:i + 2])) for i in range(n_comp - 1)]
    kept = [(m, s) for m, s in pairs if m >= 0.01]
    mean = lambda v: float(np.mean(v)) if v else math.nan  # noqa: E731
    return {"pairs": pairs, "mixture": mean([m for m, _ in kept]),
            "separability": mean([s for _, s in kept]),
            "score": mean([(1 - m) * s for m, s in kept]), "projection": proj,
            "explained_variance_ratio": pca.explained_variance_ratio_}
