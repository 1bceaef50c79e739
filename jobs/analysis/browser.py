"""The feature browser: `<root>/<grid>/results/browser/`, static pages that open from file://
with no server and no network (the analysis step builds it after the collector).

`index.html`: the grid's plots and dictionaries; `#page=dictionary&cell=<id>`: a dictionary's
features; `#page=feature&cell=<id>&f=<i>`: one feature; `#page=cluster&cell=<id>&c=<k>`.
Fixed pages (`jobs/analysis/browser_assets/`); the data are scripts calling
`BROWSER.put(key, value)`, loaded by <script> tags (a browser refuses `fetch` on file://).

Computed by `e2e.analysis.features` from what cells saved plus one pass of the frozen model
over `tokens` held-out eval tokens per (model, layer, data), shared by every dictionary there.
Which features get a page (`Settings`): every live feature (alive in training, by the cell's
alive mask, or firing on the scanned tokens) of dictionaries of at most `full_max` elements and
of each layer's Table 2 trio; a seeded sample of `sample` live features in the others. Every
feature is in its dictionary's table; nearest directions are searched among the other
dictionaries' live elements. The pass also saves the auto-interp records (`_save_records`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from e2e.analysis import features
from e2e.analysis.cosine import top_cosines
from e2e.autointerp import records
from e2e.io import atomic_write_text, cell_paths
from e2e.store import read_metrics
from jobs.analysis.pages import (
    ASSETS,
    Writer,
    copy_plots,
    read_or_empty,
    rounded,
    rounded_list,
    shades,
)
from jobs.plan.analysis_cost import (
    BROWSER_FULL_MAX,
    BROWSER_NEAREST,
    BROWSER_SAMPLE,
    BROWSER_TOKENS,
)
from jobs.plan.autointerp import RECORD_FEATURES
from jobs.report import autointerp as autointerp_report
from jobs.report import evals as evals_report

SHARD = 64  # features per data file


@dataclass(frozen=True)
class Settings:
    tokens: int = BROWSER_TOKENS  # held-out eval tokens scanned per (model, layer, data)
    full_max: int = BROWSER_FULL_MAX  # up to this size: a page for every firing feature
    sample: int = BROWSER_SAMPLE  # larger dictionaries outside the Table 2 trio: a sample
    top_k: int = 20  # top activating contexts per feature
    half_window: int = 8  # tokens shown on each side of a context's position
    bins: int = 32  # histogram of non-zero activations
    intervals: int = 5  # equal slices of (0, max], SAEDashboard's "quantile" groups
    per_interval: int = 3  # random contexts per slice
    logits: int = 10  # promoted and suppressed tokens
    nearest: int = BROWSER_NEAREST  # nearest directions per other dictionary
    on_dictionary: Callable[[], None] | None = None  # called after each (the step's progress)


@dataclass
class _Dict:
    cell: object  # results.Cell
    sae: object  # Dictionary
    alive: np.ndarray | None
    stats: features.FeatureStats | None = None
    pages: np.ndarray | None = None  # element ids with a page
    clusters: tuple[int, ...] = ()  # its multi-dimensional clusters with a page
    keep: torch.Tensor | None = None  # (rows, context): the positions it acts on

    @property
    def live(self) -> np.ndarray:
        """(n,) bool: alive in training (its alive mask) or firing on the scanned tokens."""
        fires = self.stats.count > 0
        return fires if self.alive is None else fires | self.alive


def build_logged(grid_dir: Path, cells: list, full_ids: set[str], clusters: dict,
                 settings: Settings) -> str | None:
    """`build` on the GPU if there is one, its cost in the log and in results/browser.json;
    returns None, or for a failure one line saying why (the tables are written already: the
    caller ends its step with it, after the rest)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        cost = build(grid_dir, cells, full_ids, clusters, settings, device)
    except Exception as e:  # noqa: BLE001 - any cell's broken file: say which, keep the rest
        return f"feature browser not built: {type(e).__name__}: {e}"
    atomic_write_text(grid_dir / "results" / "browser.json", json.dumps(cost, indent=1))
    print(f"feature browser: {cost['pages']} feature pages of {cost['dictionaries']} "
          f"dictionaries, {cost['bytes'] / 1e6:.1f} MB, {cost['seconds']:.0f} s: "
          f"{grid_dir / 'results' / 'browser' / 'index.html'}", flush=True)
    return None


def build(grid_dir: Path, cells: list, full_ids: set[str], clusters: dict,
          settings: Settings | None = None, device: str = "cpu") -> dict:
    """Writes `grid_dir/results/browser/` (replacing it whole); returns what it cost:
    {"pages", "dictionaries", "bytes", "seconds"}."""
    s = settings or Settings()
    t0 = time.perf_counter()
    out = grid_dir / "results" / "browser"
    tmp = out.with_name(f".browser-{time.time_ns()}")
    shutil.copytree(ASSETS, tmp)
    try:
        n_pages, rows = _build(grid_dir, tmp, cells, full_ids, clusters, s, device)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"pages": n_pages, "dictionaries": len(rows), "bytes": size,
            "seconds": time.perf_counter() - t0}


def _build(grid_dir: Path, tmp: Path, cells: list, full_ids: set[str], clusters: dict,
           s: Settings, device: str) -> tuple[int, list[dict]]:
    writer = Writer(tmp / "data")
    groups: dict[str, list] = {}
    for c in cells:
        if c.status == "done" and c.cfg.source == "model":
            key = json.dumps([c.cfg.model.name_or_path, c.cfg.layer,
                              dataclasses.asdict(c.cfg.data)], sort_keys=True)
            groups.setdefault(key, []).append(c)
    rows, n_pages = [], 0
    models: dict[str, tuple] = {}  # name -> (model, vocab strings): loaded once per model
    for g, members in enumerate(groups.values()):
        dicts = _group(writer, grid_dir, f"g{g}", members, full_ids, clusters, s, device,
                       models)
        rows += [_row(d, f"g{g}") for d in dicts]
        n_pages += sum(len(d.pages) for d in dicts)
    autointerp_report.browser_data(grid_dir / "results", writer.put)  # after a rebuild too
    evals_report.browser_data(grid_dir / "results", writer.put)
    writer.put("index", "index", {"grid": grid_dir.name, "cells": rows,
                                  "headline": read_or_empty(grid_dir / "results" / "headline.txt"),
                                  "plots": copy_plots(grid_dir / "results", tmp)})
    return n_pages, rows


def _group(writer, grid_dir: Path, gid: str, members: list, full_ids: set[str],
           clusters: dict, s: Settings, device: str, models: dict) -> list[_Dict]:
    """One (model, layer, data): the model's pass, then every dictionary there; `models`
    caches each model and its decoded vocabulary across groups."""
    from e2e.data.tokens import eval_stream
    from e2e.model import load_model, positions_for, resid_pre
    from e2e.saelens import load_saelens

    cfg = min(members, key=lambda c: c.cfg.seed).cfg
    if cfg.model.name_or_path not in models:
        model = load_model(cfg.model, device)
        models[cfg.model.name_or_path] = (
            model, [model.tokenizer.decode([i]) for i in range(model.cfg.d_vocab)])
    model, vocab = models[cfg.model.name_or_path]
    tok = model.tokenizer
    ctx = cfg.data.context_length
    tokens = eval_stream(cfg.data, tok, cfg.seed).next_batch(max(1, s.tokens // ctx))
    with torch.no_grad():
        acts = torch.cat([resid_pre(model, tokens[i:i + 8].to(device), cfg.layer).float()
                          for i in range(0, len(tokens), 8)])
    writer.put(f"vocab-{gid}", f"vocab/{gid}", vocab)
    writer.put(f"tokens-{gid}", f"tokens/{gid}", {"ctx": ctx, "ids": tokens.flatten().tolist()})
    dicts = []
    for c in sorted(members, key=lambda c: c.id):
        paths = cell_paths(grid_dir / c.id)
        sae, _ = load_saelens(paths.sae)
        sae = sae.to(device).eval()
        mask = read_metrics(paths.metrics)["alive_mask"]
        keep = positions_for(c.cfg.data, tok, model.cfg.d_vocab).kept(tokens.to(device), acts)
        d = _Dict(c, sae, None if mask is None else np.asarray(mask[0], dtype=bool),
                  clusters=tuple(k["cluster"] for k in clusters.get(c.id, [])), keep=keep)
        d.stats = features.scan(sae.encode, acts, sae.n_dict, s.top_k, s.bins, s.intervals,
                                s.per_interval, seed=c.cfg.seed, keep=keep)
        pages = np.flatnonzero(d.live)
        if sae.n_dict > s.full_max and c.id not in full_ids and len(pages) > s.sample:
            pages = np.sort(np.random.default_rng(0).choice(pages, s.sample, replace=False))
        d.pages = pages
        dicts.append(d)
    w_u = model.W_U.detach().float()
    rec = (autointerp_report.records_dir(grid_dir / "results"), tokens.flatten().numpy(), vocab)
    for d in dicts:
        _write_dictionary(writer, gid, d, dicts, acts, w_u, s, rec)
        (s.on_dictionary or (lambda: None))()
        if d.cell.id in clusters:
            writer.put(f"clusters-{d.cell.id}", f"clusters/{d.cell.id}",
                       _clusters(clusters[d.cell.id], tok))
    return dicts


def _write_dictionary(writer, gid: str, d: _Dict, dicts: list[_Dict], acts, w_u,
                      s: Settings, rec: tuple) -> None:
    st, n = d.stats, d.sae.n_dict
    page_of = np.full(n, -1)
    page_of[d.pages] = np.arange(len(d.pages)) // SHARD
    top_tok = st.top_pos[:, 0] if st.top_pos.size else np.full(n, -1)  # -1: never fired
    writer.put(f"cell-{d.cell.id}", f"cell/{d.cell.id}", {
        **_row(d, gid), "n_tokens": st.n_tokens, "intervals": s.intervals,
        "density": rounded_list(st.density),
        "max": rounded_list(st.max), "mean": rounded_list(np.nan_to_num(st.mean)),
        "top_pos": top_tok.tolist(), "alive": None if d.alive is None else
        d.alive.astype(int).tolist(), "shard": page_of.tolist()})
    if not len(d.pages):
        return
    # the contexts of every page: top-k and interval samples, one window pass
    top = st.top_pos[d.pages]
    ivl = st.interval_pos[d.pages].reshape(len(d.pages), -1)
    pos = np.concatenate([top, ivl], 1)
    elem = np.broadcast_to(d.pages[:, None], pos.shape)
    ok = pos >= 0
    win = features.window_codes(d.sae.encode, acts, elem[ok], pos[ok], s.half_window, d.keep)
    levels = np.full(pos.shape, "", dtype=object)
    levels[ok] = shades(win, st.max[elem[ok]])
    full = np.full(pos.shape + win.shape[1:], np.nan, dtype=np.float32)
    full[ok] = win
    _save_records(rec, d, pos, full, acts, top.shape[1], s)
    dirs = d.sae.dict_elements.detach().float()[:, d.pages]  # the pages' directions
    up, up_v, down, down_v = features.logit_effects(dirs, w_u, s.logits)
    near = []
    for o in dicts:
        if o is d or o.cell.cfg.seed != d.cell.cfg.seed:
            continue
        live = np.flatnonzero(o.live)
        if not len(live):
            continue
        v, i = top_cosines(dirs, o.sae.dict_elements.detach().float()[:, live], s.nearest)
        i = live[i.cpu().numpy()]
        near.append((o.cell.id, v.cpu().numpy(), i, np.isin(i, o.pages)))
    k = top.shape[1]
    records = {}
    for r, f in enumerate(d.pages):
        lo, hi = st.hist_range(f)
        records[int(f)] = {
            "count": int(st.count[f]), "mean": rounded(st.mean[f]), "max": rounded(st.max[f]),
            "hist": st.hist[f].tolist(), "lo": rounded(lo), "hi": rounded(hi),
            "top": [[int(pos[r, j]), rounded(st.top_val[f, j]), levels[r, j]] for j in range(k)
                    if pos[r, j] >= 0],
            "intervals": [[j // s.per_interval, int(pos[r, k + j]), levels[r, k + j]]
                          for j in range(ivl.shape[1]) if pos[r, k + j] >= 0],
            "up": [[int(t), rounded(v)] for t, v in zip(up[r], up_v[r], strict=True)],
            "down": [[int(t), rounded(v)] for t, v in zip(down[r], down_v[r], strict=True)],
            "near": [[cid, int(i[r, j]), rounded(v[r, j]), int(p[r, j])] for cid, v, i, p in near
                     for j in range(v.shape[1])]}
    for shard in range(0, len(d.pages), SHARD):
        part = {int(f): records[int(f)] for f in d.pages[shard:shard + SHARD]}
        key = f"feat/{d.cell.id}/{shard // SHARD}"
        writer.put(f"feat-{d.cell.id}-{shard // SHARD}", key, part)


def _save_records(rec: tuple, d: _Dict, pos: np.ndarray, win: np.ndarray, acts, k: int,
                  s: Settings) -> None:
    """The auto-interp records (`e2e.autointerp.records`) of at most RECORD_FEATURES pages
    (seeded): top and interval contexts, and as many silent ones as interval samples."""
    folder, tokens, vocab = rec
    rows = np.sort(np.random.default_rng(d.cell.cfg.seed).choice(
        len(d.pages), min(len(d.pages), RECORD_FEATURES), replace=False))
    spos, scodes = records.silent_positions(
        lambda e, p: features.window_codes(d.sae.encode, acts, d.pages[rows][e], p,
                                           s.half_window, d.keep),
        len(rows), acts.shape[0] * acts.shape[1], s.intervals * s.per_interval, d.cell.cfg.seed)
    kind = np.array([records.TOP] * k + [records.INTERVAL] * (pos.shape[1] - k)
                    + [records.SILENT] * spos.shape[1], dtype=np.int8)
    records.save(folder / f"{d.cell.id}.npz", d.pages[rows],
                 np.concatenate([pos[rows], spos], 1), kind,
                 np.concatenate([win[rows], scodes], 1), tokens, acts.shape[1], vocab)


def _clusters(found: list[dict], tok) -> list[dict]:
    """The multi-dimensional clusters of a dictionary: members, indices, and its PC planes'
    points (at most 400 each) with the token and a few tokens of context for each."""
    out = []
    for c in found:
        proj, ids, ctx = c["projection"], c["tokens"], c["ctx"]
        keep = np.linspace(0, len(proj) - 1, min(400, len(proj))).astype(int)
        hover = []
        for p in np.asarray(c["positions"])[keep]:
            r0 = (p // ctx) * ctx
            a, b = max(r0, p - 6), min(r0 + ctx, p + 3)
            hover.append(tok.decode(ids[a:p]) + "[" + tok.decode(ids[p:p + 1]) + "]"
                         + tok.decode(ids[p + 1:b]))
        out.append({"cluster": c["cluster"], "members": c["members"], "score": rounded(c["score"]),
                    "mixture": rounded(c["mixture"]), "separability": rounded(c["separability"]),
                    "pcs": proj.shape[1], "points": rounded_list(proj[keep]),
                    "token": [tok.decode([ids[p]]) for p in np.asarray(c["positions"])[keep]],
                    "hover": hover})
    return out


def _row(d: _Dict, gid: str) -> dict:
    c = d.cell
    return {"id": c.id, "setting": c.curve, "layer": c.cfg.layer, "lam": c.cfg.lam,
            "seed": c.cfg.seed, "n_dict": d.sae.n_dict,
            "l0": rounded(c.eval.get("l0", float("nan"))),
            "ce_loss_increase": rounded(c.eval.get("ce_loss_increase", float("nan"))),
            "alive": None if d.alive is None else int(d.alive.sum()),
            "firing": int((d.stats.count > 0).sum()), "live": int(d.live.sum()),
            "pages": len(d.pages), "group": gid,
            "clusters": list(d.clusters)}
