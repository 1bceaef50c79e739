"""The analysis step's multi-dimensional features (Engels et al. 2024) of the Table 2 trio of
each layer (`jobs.analysis.step` calls it; options: `jobs.analysis.step.Options`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from e2e.io import cell_paths
from jobs.report import plots


@torch.no_grad()
def kept_codes(model, sae, cfg, tokens: torch.Tensor) -> torch.Tensor:
    """(batch, pos, n_dict): `sae`'s codes of the residual at `cfg`'s hook for `tokens`
    (batch, pos), zero at the positions it never acts on (`data.skip_positions`,
    `data.exclude_tokens`, `data.exclude_norm_multiple`: `e2e.model.positions`)."""
    from e2e.model import positions_for, resid_pre

    resid = resid_pre(model, tokens, cfg.layer)
    codes = sae.encode(resid)
    codes[~positions_for(cfg.data, model.tokenizer, model.cfg.d_vocab).kept(tokens, resid)] = 0
    return codes


def multidim_sections(grid_dir: Path, out: Path, chosen: list, opts, h5: dict, clusters: dict,
                      tick=lambda _: None) -> list[tuple]:
    """Multi-dimensional features of the `chosen` dictionaries (`jobs.analysis.step.Saved`: the
    Table 2 trio of each layer): clusters, their points Σ a_i d_i on eval tokens, PCA and the
    mixture / separability indices; `tick(n_dict)` after each dictionary (the progress)."""
    from e2e.data.tokens import eval_stream
    from e2e.model import load_model
    from e2e.saelens import load_saelens

    rows, scatter, tops = [], [], []
    models: dict[str, object] = {}
    for x in chosen:
        cfg = x.cfg
        if cfg.model.name_or_path not in models:
            models[cfg.model.name_or_path] = load_model(cfg.model, "cpu")
        model = models[cfg.model.name_or_path]
        sae, _ = load_saelens(cell_paths(grid_dir / x.point.cell_id).sae)
        tokens = eval_stream(cfg.data, model.tokenizer, cfg.seed).next_batch(
            max(1, opts.multidim_tokens // cfg.data.context_length))
        codes = kept_codes(model, sae, cfg, tokens)
        flat = tokens.reshape(-1).tolist()
        results = _clusters(x, codes.reshape(-1, sae.n_dict)[:, x.alive_index], flat, opts, h5)
        scatter += [(x.point.setting, r[4]["mixture"], r[4]["separability"]) for r in results]
        results.sort(key=lambda r: -r[0])
        clusters[x.point.cell_id] = [
            {"cluster": r[1], "members": x.alive_index[r[7]].tolist(), "score": r[0],
             "mixture": r[4]["mixture"], "separability": r[4]["separability"],
             "projection": r[4]["projection"], "positions": r[8], "ctx": tokens.shape[1],
             "tokens": flat} for r in results[:opts.top]]
        for score, cl, size, n, ind, toks, mean_cos, _, _ in results[:opts.top]:
            common = [t for t, _ in Counter(toks).most_common(5)]
            words = ", ".join(repr(model.tokenizer.decode([t])) for t in common)
            rows.append((x.point.layer, x.point.setting, f"{x.point.lam:g}", cl, size, n,
                         f"{mean_cos:.2f}", f"{ind['mixture']:.3f}",
                         f"{ind['separability']:.3f}", f"{score:.3f}", words))
        for r in results[:2]:  # the two best clusters' PC planes
            tops.append((x, r[1], r[4]["projection"], r[5], model.tokenizer))
        tick(sae.n_dict)
    if scatter or tops:
        plots.multidim_figures(out, scatter, tops)
    return [("Multi-dimensional features: top clusters (Table 2 runs)",
             ("layer", "setting", "λ", "cluster", "elements", "points", "mean cos",
              "mixture M", "separability S", "(1-M)·S", "frequent tokens"),
             rows or [("-",) * 11],
             f"{opts.clustering} clustering of alive directions; points: Σ a_i d_i of the "
             f"cluster on {opts.multidim_tokens} eval tokens where any element fires; "
             "indices on consecutive PC pairs (PCA ≤ 5), mean over pairs with M ≥ 0.01")]


def _clusters(x, codes: torch.Tensor, flat_tokens: list[int], opts, h5: dict) -> list[tuple]:
    """(score, cluster, elements, points, indices, tokens, mean cos, alive-element indices,
    points' flat token positions) of each cluster (>= 2 elements, >= 20 tokens), by label."""
    from e2e.analysis import multidim

    if opts.clustering == "graph":
        labels = multidim.graph_clusters(x.directions, opts.graph_k, opts.graph_cutoff)
    else:
        labels = multidim.spectral_clusters(
            x.directions, opts.n_clusters or max(2, x.directions.shape[1] // 25))
    found = []  # (cluster, element indices, firing rows, points)
    for cl in np.unique(labels):
        idx = np.flatnonzero(labels == cl)
        if len(idx) < 2:
            continue
        fires = (codes[:, idx] != 0).any(1)
        if int(fires.sum()) < 20:
            continue
        pts = (codes[fires][:, idx] @ x.directions[:, idx].T).double().numpy()[:20_000]
        found.append((int(cl), idx, np.flatnonzero(fires.numpy())[:len(pts)], pts))
    indices = multidim.clusters_indices([f[3] for f in found], steps=opts.mixture_steps)
    results = []
    for (cl, idx, rows, pts), ind in zip(found, indices, strict=True):
        if np.isnan(ind["score"]):
            continue
        d = x.directions[:, idx]
        mean_cos = float(((d.T @ d).sum() - len(idx)) / (len(idx) * (len(idx) - 1)))
        results.append((ind["score"], cl, len(idx), len(pts), ind,
                        [flat_tokens[i] for i in rows], mean_cos, idx, rows))
        h5[f"multidim/{x.point.cell_id}/cluster{cl}/pairs"] = np.array(ind["pairs"])
    return results
