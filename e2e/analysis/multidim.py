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
import warnings

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
    # The sparse path's eigenvectors by LOBPCG: ARPACK took 433 s at 11,520 directions and 460
    # clusters, LOBPCG 74 s (2 cores); the dense path keeps ARPACK (its results unchanged).
    # LOBPCG stops at its iteration cap a little short of its tolerance (residuals ~1e-4 at
    # 23,040 directions) and says so in a warning that prints every eigenvalue; the embedding
    # is only rounded into clusters, so that accuracy is kept and the warning is not printed.
    solver = "arpack" if n <= DENSE_AFFINITY_MAX else "lobpcg"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return SpectralClustering(n_clusters, affinity="precomputed", random_state=seed,
                                  eigen_solver=solver, assign_labels="discretize"
                                  ).fit_predict(aff)


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
    return mixture_indices([x], eps, steps, lr, seed)[0]


def mixture_indices(sets: list[np.ndarray], eps: float = EPS, steps: int = 2000,
                    lr: float = 0.1, seed: int = 0, chunk_points: int = 1 << 21) -> list[float]:
    """`mixture_index` of each (n_i, 2) point set, fitted together in float32.

    All lines are fitted as one batch (padded, masked; sets of similar size share a chunk of at
    most `chunk_points` padded points): the loss is the sum of each set's own surrogate, and
    Adam is element-wise, so each line follows the same steps it would alone. One large
    operation per step instead of one per set: thousands of tiny float64 steps stalled for
    minutes when another process shared the cores (issue 20, item 6).
    """
    out = [math.nan] * len(sets)
    chunks, chunk = [], []
    for i in sorted(range(len(sets)), key=lambda i: len(sets[i])):  # the last is the largest
        if chunk and (len(chunk) + 1) * len(sets[i]) > chunk_points:
            chunks.append(chunk)
            chunk = []
        chunk.append(i)
    for c in chunks + [chunk] * bool(chunk):
        for i, m in zip(c, _fit_lines([sets[i] for i in c], eps, steps, lr, seed), strict=True):
            out[i] = m
    return out


def _fit_lines(sets: list[np.ndarray], eps: float, steps: int, lr: float, seed: int
               ) -> list[float]:
    n = max(len(x) for x in sets)
    pts = torch.zeros(len(sets), n, 2)
    mask = torch.zeros(len(sets), n)
    for i, x in enumerate(sets):
        pts[i, :len(x)] = torch.as_tensor(x, dtype=torch.float32)
        mask[i, :len(x)] = 1
    count = mask.sum(1)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, generator=g, dtype=torch.float64).float().repeat(len(sets), 1)
    a.requires_grad_()
    b = torch.zeros(len(sets), requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=lr)

    def z() -> torch.Tensor:  # (sets, n): the RMS-normalised signed distance to each line
        y = torch.einsum("snk,sk->sn", pts, a) + b[:, None]
        rms = ((y.pow(2) * mask).sum(1) / count).sqrt().clamp_min(1e-12)
        return y / rms[:, None]

    for step in range(steps):
        tau = 10 ** (-2 * step / max(1, steps - 1))  # 1 -> 0.01
        loss = -((torch.sigmoid((eps - z().abs()) / tau) * mask).sum(1) / count).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (((z().abs() < eps).float() * mask).sum(1) / count).tolist()


def mutual_information(x: np.ndarray, bins: int = 10) -> float:
    """MI (bits) of the two columns of x from a bins × bins histogram over the data range."""
    return float(_mutual_information(x[None], bins)[0])


def _mutual_information(x: np.ndarray, bins: int) -> np.ndarray:
    """MI (bits) of each (n, 2) set of x (r, n, 2), binned as np.histogram2d does (equal bins
    over each column's range, the last bin closed)."""
    lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
    width = np.where(hi > lo, hi - lo, 1.0)
    idx = np.clip(((x - lo) / width * bins).astype(np.int64), 0, bins - 1)  # (r, n, 2)
    r = len(x)
    flat = (np.arange(r)[:, None] * bins + idx[..., 0]) * bins + idx[..., 1]
    p = np.bincount(flat.ravel(), minlength=r * bins * bins).reshape(r, bins, bins)
    p = p / p.sum((1, 2), keepdims=True)
    px, py = p.sum(2, keepdims=True), p.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / (px * py) + 1e-10), 0.0)
    return terms.sum((1, 2)) / math.log(2)


def separability_index(x: np.ndarray, n_angles: int = 100, bins: int = 10) -> float:
    """The smallest MI (bits) over `n_angles` rotations of the plane in [0, 2π]."""
    theta = np.linspace(0, 2 * math.pi, n_angles)
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    x0, x1 = x[:, 0][None], x[:, 1][None]
    rotated = np.stack([c * x0 + s * x1, -s * x0 + c * x1], axis=-1)  # x @ [[c, -s], [s, c]]
    return float(_mutual_information(rotated, bins).min())


def cluster_indices(points: np.ndarray, max_components: int = 5, steps: int = 2000,
                    seed: int = 0) -> dict:
    """`clusters_indices` of one cluster."""
    return clusters_indices([points], max_components, steps, seed)[0]


def clusters_indices(clusters: list[np.ndarray], max_components: int = 5, steps: int = 2000,
                     seed: int = 0) -> list[dict]:
    """PCA of each cluster's reconstruction points (n, d) and M, S on consecutive PC pairs; the
    mixture indices of every pair of every cluster are fitted in one batch.

    Returns per cluster {"pairs": [(M, S), ...], "mixture", "separability", "score",
    "projection" (n, ≤5), "explained_variance_ratio"}; mixture and separability are the means
    over pairs with M ≥ 0.01, and score is the mean of (1 − M)·S over them.
    """
    from sklearn.decomposition import PCA

    fits = []
    for points in clusters:
        n_comp = min(max_components, points.shape[0], points.shape[1])
        pca = PCA(n_components=n_comp, random_state=seed)
        fits.append((pca.fit_transform(points), pca.explained_variance_ratio_))
    planes = [proj[:, i:i + 2] for proj, _ in fits for i in range(proj.shape[1] - 1)]
    ms = iter(mixture_indices(planes, steps=steps, seed=seed))  # in the order of `planes`
    out = []
    for proj, ratio in fits:
        pairs = [(next(ms), separability_index(proj[:, i:i + 2]))
                 for i in range(proj.shape[1] - 1)]
        kept = [(m, s) for m, s in pairs if m >= 0.01]
        mean = lambda v: float(np.mean(v)) if v else math.nan  # noqa: E731
        out.append({"pairs": pairs, "mixture": mean([m for m, _ in kept]),
                    "separability": mean([s for _, s in kept]),
                    "score": mean([(1 - m) * s for m, s in kept]), "projection": proj,
                    "explained_variance_ratio": ratio})
    return out
