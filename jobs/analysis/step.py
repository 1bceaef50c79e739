"""The analysis step (`analyze`; its command line is `jobs/analyze.py`)."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from e2e.analysis import geometry
from e2e.config import n_dict_for
from e2e.io import atomic_path, atomic_write_text, cell_paths
from e2e.store import read_metrics
from e2e.typed import ConfigError, require
from jobs.analysis.browser import Settings as BrowserSettings
from jobs.analysis.browser import build_logged
from jobs.analysis.multidim import multidim_sections
from jobs.cli import StepIncomplete
from jobs.plan.analysis_cost import (
    GEOMETRY_S,
    MIXTURE_STEPS,
    MULTIDIM_TOKENS,
    browser_estimate,
    dictionary_seconds,
)
from jobs.report import compare, plots, tables
from jobs.report.collect import collect
from jobs.report.mfr import is_mfr_cell
from jobs.report.results import (
    ANALYSIS_H5,
    ANALYSIS_MD,
    ANALYSIS_TEX,
    existing_grid_dir,
    read_grid,
    to_point,
)


def modelled_bar(desc: str, total_s: float):
    """A tqdm bar on stderr over a step's modelled seconds (its cost model's): the local
    status line reads its n/total as the step's fraction (`fraction_done`)."""
    from tqdm import tqdm

    return tqdm(total=max(1, math.ceil(total_s)), desc=desc, mininterval=1, file=sys.stderr,
                unit="modelled s", bar_format="{desc}: {n}/{total} [{elapsed}] {unit}")


# Braun et al. 2024, Sec. 3.3 (layer 6): within-SAE mean max cosine differences.
PAPER_WITHIN_DIFF = {"local - e2e_ds": 0.04, "local - e2e": 0.166}


@dataclass
class Saved:
    """A finished cell's dictionary as the analyses see it."""

    point: compare.Point
    seed: int
    key: str  # the config without its seed: cells with equal keys differ only in seed
    directions: torch.Tensor  # (d_in, n_alive) unit-norm alive elements
    mask_saved: bool
    eval: dict[str, float]
    cfg: object  # CellConfig
    alive_index: torch.Tensor  # indices of the alive elements in the dictionary


def load(grid_dir: Path, results_cells) -> list[Saved]:
    """Finished ReLU cells on a language model (the paper's SAEs), alive directions only;
    fine-tuned cells are left to the collector's own table (their analyses are the parents'
    plus a short fine-tune, and would multiply this step's time)."""
    from safetensors.torch import load_file

    out = []
    for c in results_cells:
        if (c.status != "done" or c.cfg.source != "model" or is_mfr_cell(c.cfg)
                or c.cfg.init.warm):
            continue
        paths = cell_paths(grid_dir / c.id)
        w = load_file(str(paths.sae / "sae_weights.safetensors"))["W_dec"].float()
        d = torch.nn.functional.normalize(w, dim=1).T  # (d_in, n_dict)
        mask = read_metrics(paths.metrics)["alive_mask"]
        saved = mask is not None
        keep = torch.as_tensor(mask[0]) if saved else torch.ones(d.shape[1], dtype=torch.bool)
        cfg = c.cfg.to_dict()
        cfg.pop("seed")
        out.append(Saved(to_point(c), c.cfg.seed, json.dumps(cfg, sort_keys=True),
                              d[:, keep].contiguous(), saved, c.eval, c.cfg,
                              torch.nonzero(keep).flatten()))
    return out


@dataclass(frozen=True)
class Options:
    multidim: bool = True
    clustering: Literal["spectral", "graph"] = "spectral"  # graph: top-k neighbours above a
    # cosine cutoff
    n_clusters: int = 0  # spectral: 0 takes one cluster per 25 alive elements
    graph_k: int = 2
    graph_cutoff: float = 0.5
    multidim_tokens: int = MULTIDIM_TOKENS  # eval tokens whose codes feed the clusters' points
    mixture_steps: int = MIXTURE_STEPS  # gradient-ascent steps of the mixture index
    top: int = 10  # clusters listed per cell
    browser: bool = True  # the feature browser (jobs.analysis.browser), results/browser/index.html
    browser_tokens: int = BrowserSettings.tokens  # eval tokens per (model, layer)
    browser_full_max: int = BrowserSettings.full_max  # up to this size: every feature
    browser_sample: int = BrowserSettings.sample  # pages in larger ones (trio apart)

    def __post_init__(self) -> None:
        require(self.clustering in ("spectral", "graph"), "clustering", "spectral or graph",
                self.clustering)
        for name in ("n_clusters", "graph_k", "multidim_tokens", "mixture_steps", "top",
                     "browser_tokens", "browser_full_max", "browser_sample"):
            low = 0 if name == "n_clusters" else 1
            require(getattr(self, name) >= low, name, f">= {low}", getattr(self, name))
        require(-1 <= self.graph_cutoff <= 1, "graph_cutoff", "in [-1, 1]", self.graph_cutoff)


def analyze(root: Path | str, grid: str, opts: Options | None = None) -> Path:
    """Writes the analysis files of `<root>/<grid>/results/`, then runs the collector again so
    the tables include them; returns that folder. StepIncomplete (after writing everything
    else) when the multi-dimensional step or the feature browser cannot be made."""
    opts = opts or Options()
    t0 = time.perf_counter()
    grid_dir = existing_grid_dir(root, grid)
    out = grid_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    dicts = load(grid_dir, read_grid(grid_dir))
    points = [x.point for x in dicts if x.seed == 0] or [x.point for x in dicts]
    within = {x.point.cell_id: geometry.max_cosines(x.directions).numpy()
              for x in dicts if x.directions.shape[1] > 1}
    h5: dict[str, np.ndarray] = {}
    layers = sorted({p.layer for p in points})
    trio = [x for la in layers for p, _ in compare.paired(points, la, "ce") for x in dicts
            if x.point.cell_id == p.cell_id]  # each layer's Table 2 runs
    cost = _Cost(dicts, layers)
    bar = modelled_bar("analysis", cost.total(trio, opts))
    sections = [_within_section(dicts, within, h5), _cross_seed_section(dicts, h5)]
    trio_sections, down = _trio_sections(dicts, points, layers, within, h5)
    sections += trio_sections
    bar.update(round(cost.geometry))
    clusters: dict[str, list[dict]] = {}  # cell id -> its clusters, for the browser
    failed = []  # the parts that could not be made (a model or data that moved away): one line
    if opts.multidim:
        try:
            sections += multidim_sections(grid_dir, out, trio, opts, h5, clusters,
                                          lambda n: bar.update(round(cost.multidim(n))))
        except ConfigError as e:  # ModelUnavailableError, DataUnavailableError
            failed.append(f"multi-dimensional features not computed: {e}")
    elapsed = time.perf_counter() - t0
    md = "".join(tables.markdown_table(*s) for s in sections)
    md += f"_analysis of {len(dicts)} dictionaries in {elapsed:.1f} s_\n"
    atomic_write_text(out / ANALYSIS_MD, md)
    atomic_write_text(out / ANALYSIS_TEX, "".join(tables.latex_table(*s) for s in sections))
    _write_h5(out / ANALYSIS_H5, h5, {cid: float(v.mean()) for cid, v in within.items()})
    if within:
        plots.geometry_figures(out, dicts, within, down)
    collect(root, grid)  # tables.md/.tex and summary.csv pick the analysis up
    if opts.browser:
        share = cost.browser / max(1, len(dicts))
        failed.append(_browser(grid_dir, {x.point.cell_id for x in trio}, clusters, opts,
                               lambda: bar.update(round(share))))
    bar.close()
    if any(failed):
        raise StepIncomplete(f"{'; '.join(f for f in failed if f)} (the rest is written: {out})")
    return out


class _Cost:
    """The parts of `jobs.plan.analysis_cost`'s model, in seconds, for the progress bar: the
    geometry, each multi-dimensional dictionary, the browser (the model up to the deepest
    hook; the analysed dictionaries)."""

    def __init__(self, dicts: list[Saved], layers: list[int]):
        self.d_in = dicts[0].directions.shape[0] if dicts else 1
        self.depth = max(layers, default=0) + 1
        self.per_thread = 1 / np.sqrt(max(1, torch.get_num_threads()) / 2)
        self.geometry = sum(GEOMETRY_S * x.directions.shape[1] ** 2 * self.d_in
                            for x in dicts) * self.per_thread
        self.browser = browser_estimate(
            [(x.point.layer, n_dict_for(self.d_in, x.cfg.sae.dict_size_to_input_ratio), 0)
             for x in dicts], self.d_in, self.depth, torch.cuda.is_available())[2]

    def multidim(self, n_dict: int) -> float:
        return dictionary_seconds(n_dict, self.d_in, self.depth) * self.per_thread

    def total(self, trio: list[Saved], opts) -> float:
        multidim = sum(self.multidim(n_dict_for(self.d_in, x.cfg.sae.dict_size_to_input_ratio))
                       for x in trio) if opts.multidim else 0
        return self.geometry + multidim + (self.browser if opts.browser else 0)


def _browser(grid_dir: Path, trio: set[str], clusters: dict, opts: Options, tick) -> str | None:
    """The feature browser, after the tables (its index shows them); every feature of the
    `trio` cells gets a page; `tick()` after each dictionary. None, or why it was not built."""
    return build_logged(grid_dir, read_grid(grid_dir), trio, clusters, BrowserSettings(
        opts.browser_tokens, opts.browser_full_max, opts.browser_sample, on_dictionary=tick))


def _within_section(dicts: list[Saved], within: dict[str, np.ndarray], h5: dict) -> tuple:
    by_id = {x.point.cell_id: x for x in dicts}
    rows = []
    for cid, v in sorted(within.items()):
        x = by_id[cid]
        rows.append((cid, x.point.layer, x.point.setting, f"{x.point.lam:g}", x.seed, len(v),
                     f"{v.mean():.3f}", "" if x.mask_saved else "no alive mask: all elements"))
        h5[f"within/{cid}/max_cos"] = v
        h5[f"within/{cid}/hist"] = geometry.histogram(v)
    return ("Geometry: within-SAE max cosine similarity",
            ("cell", "layer", "setting", "λ", "seed", "alive elements", "mean", ""),
            rows, "each alive element's largest cosine to another element of its SAE")


def _cross_seed_section(dicts: list[Saved], h5: dict) -> tuple:
    rows = []
    seeds: dict[str, list[Saved]] = {}
    for x in dicts:
        seeds.setdefault(x.key, []).append(x)
    for group in seeds.values():
        group.sort(key=lambda x: x.seed)
        for a, b in zip(group, group[1:], strict=False):
            for src, dst in ((a, b), (b, a)):
                v = geometry.max_cosines(src.directions, dst.directions).numpy()
                name = f"{src.point.cell_id} -> {dst.point.cell_id}"
                h5[f"cross_seed/{name}"] = v
                rows.append((src.point.layer, src.point.setting, f"{src.point.lam:g}",
                             f"seed {src.seed} -> seed {dst.seed}", f"{v.mean():.3f}"))
    return ("Geometry: cross-seed max cosine similarity",
            ("layer", "setting", "λ", "direction", "mean"),
            rows or [("-", "-", "-", "no cells differing only in seed", "-")],
            "each alive element's largest cosine to the other seed's dictionary")


def _trio_sections(dicts: list[Saved], points, layers, within: dict[str, np.ndarray],
                   h5: dict) -> tuple[list[tuple], list[tuple]]:
    """Cross-type geometry, within-SAE differences and downstream reconstruction of each
    layer's Table 2 runs; returns the sections and the downstream rows (for the figure)."""
    by_id = {x.point.cell_id: x for x in dicts}
    cross, diffs, down = [], [], []
    for layer in layers:
        trio = {p.setting: by_id[p.cell_id] for p, _ in compare.paired(points, layer, "ce")}
        local = trio.get("local")
        for s in ("e2e", "e2e_ds", "ksvd"):
            if s in trio and local is not None:
                v = geometry.max_cosines(trio[s].directions, local.directions).numpy()
                h5[f"cross_type/L{layer}/{s}->local"] = v
                cross.append((layer, f"{s} -> local", f"{v.mean():.3f}"))
            if s in trio and local is not None and {local.point.cell_id,
                                                    trio[s].point.cell_id} <= set(within):
                d, lo, hi = geometry.bootstrap_mean_diff(within[local.point.cell_id],
                                                         within[trio[s].point.cell_id])
                paper = PAPER_WITHIN_DIFF.get(f"local - {s}", "") if layer == 6 else ""
                diffs.append((layer, f"local - {s}", f"{d:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]",
                              paper))
        for s, x in trio.items():
            layer_mse = sorted((int(k.split(".")[1]), v) for k, v in x.eval.items()
                               if k.startswith("mse/blocks."))
            for k, mse in layer_mse:
                ev = x.eval.get(f"explained_variance/blocks.{k}.hook_resid_pre", float("nan"))
                down.append((layer, s, f"{x.point.lam:g}", k, f"{mse:.5g}", f"{ev:.3f}"))
    return [("Geometry: cross-type max cosine similarity (Table 2 runs)",
             ("layer", "direction", "mean"), cross or [("-", "-", "-")], ""),
            ("Geometry: within-SAE mean differences (Table 2 runs)",
             ("layer", "difference", "value", "95% bootstrap CI", "paper"),
             diffs or [("-", "-", "-", "-", "-")],
             "paper, GPT-2 layer 6: local - e2e_ds = +0.04, local - e2e = +0.166"),
            ("Downstream reconstruction (Table 2 runs)",
             ("SAE layer", "setting", "λ", "model layer (resid_pre)", "MSE",
              "explained variance"), down or [("-",) * 6], "")], down


def _write_h5(path: Path, arrays: dict[str, np.ndarray], means: dict[str, float]) -> None:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k.replace(" ", ""), data=v)
            for cid, m in means.items():
                f.attrs[cid] = m
