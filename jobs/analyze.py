"""`python jobs/analyze.py root=<root> grid=<name>`: the paper's analyses of the saved
dictionaries, run after the collector (its own SLURM job, `afterany` on the collector).

Reads only what finished cells saved (sae/ weights, metrics.h5 with `alive_mask` and the eval
scalars) and writes beside the tables in `<root>/<grid>/results/`:
- geometry (Braun et al. 2024, Sec. 3.3, Figs. 3, 7, 8) on the unit-norm directions of alive
  elements: within-SAE max cosine per cell (mean and a 50-bin histogram), cross-seed (cells
  that differ only in seed) and cross-type (e2e -> local, e2e_ds -> local for the Table 2
  trio) max cosines, and the differences local - e2e_ds, local - e2e of within-SAE means with
  95% bootstrap CIs; `geometry_within.png` (Fig. 7), `geometry_hist.png` (Fig. 3);
- downstream reconstruction (Figs. 2, 6): MSE and explained variance at the SAE's layer and at
  every later resid_pre for the Table 2 trio of each layer, `downstream.png`;
- `analysis.md` / `analysis.tex` (appended to tables.md/.tex by the collector, which this step
  re-runs at its end), `analysis.h5`, and a `within_max_cos_mean` column in summary.csv.
A half-finished grid gets what its finished cells allow; cells without an alive mask (trained
before it was saved) use every element, and the table says so.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import geometry  # noqa: E402
from e2e.io import atomic_path, atomic_write_text, cell_paths  # noqa: E402
from e2e.store import read_metrics  # noqa: E402
from jobs import tables  # noqa: E402

ANALYSIS_H5 = "analysis.h5"
ANALYSIS_MD = "analysis.md"
ANALYSIS_TEX = "analysis.tex"
# Braun et al. 2024, Sec. 3.3 (layer 6): within-SAE mean max cosine differences.
PAPER_WITHIN_DIFF = {"local - e2e_ds": 0.04, "local - e2e": 0.166}
COLORS = {"local": "tab:blue", "e2e": "tab:orange", "e2e_ds": "tab:green"}


@dataclass
class Dictionary:
    point: tables.Point
    seed: int
    key: str  # the config without its seed: cells with equal keys differ only in seed
    directions: torch.Tensor  # (d_in, n_alive) unit-norm alive elements
    mask_saved: bool
    eval: dict[str, float]


def load(grid_dir: Path, results_cells) -> list[Dictionary]:
    """Finished ReLU cells on a language model (the paper's SAEs), alive directions only."""
    from safetensors.torch import load_file

    from jobs.collect import to_point
    from jobs.mfr_report import is_mfr_cell

    out = []
    for c in results_cells:
        if c.status != "done" or c.cfg.source != "model" or is_mfr_cell(c.cfg):
            continue
        paths = cell_paths(grid_dir / c.id)
        w = load_file(str(paths.sae / "sae_weights.safetensors"))["W_dec"].float()
        d = torch.nn.functional.normalize(w, dim=1).T  # (d_in, n_dict)
        mask = read_metrics(paths.metrics)["alive_mask"]
        saved = mask is not None
        keep = torch.as_tensor(mask[0]) if saved else torch.ones(d.shape[1], dtype=torch.bool)
        cfg = c.cfg.to_dict()
        cfg.pop("seed")
        out.append(Dictionary(to_point(c), c.cfg.seed, json.dumps(cfg, sort_keys=True),
                              d[:, keep].contiguous(), saved, c.eval))
    return out


def analyze(root: Path | str, grid: str) -> Path:
    from jobs.collect import collect, read_grid

    t0 = time.perf_counter()
    grid_dir = Path(root) / grid
    out = grid_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    dicts = load(grid_dir, read_grid(grid_dir))
    points = [x.point for x in dicts if x.seed == 0] or [x.point for x in dicts]
    by_id = {x.point.cell_id: x for x in dicts}
    within = {x.point.cell_id: geometry.max_cosines(x.directions).numpy()
              for x in dicts if x.directions.shape[1] > 1}
    sections, h5 = [], {}

    rows = []
    for cid, v in sorted(within.items()):
        x = by_id[cid]
        rows.append((cid, x.point.layer, x.point.setting, f"{x.point.lam:g}", x.seed, len(v),
                     f"{v.mean():.3f}", "" if x.mask_saved else "no alive mask: all elements"))
        h5[f"within/{cid}/max_cos"] = v
        h5[f"within/{cid}/hist"] = geometry.histogram(v)
    sections.append(("Geometry: within-SAE max cosine similarity",
                     ("cell", "layer", "setting", "λ", "seed", "alive elements", "mean", ""),
                     rows, "each alive element's largest cosine to another element of its SAE"))

    rows = []
    seeds: dict[str, list[Dictionary]] = {}
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
    sections.append(("Geometry: cross-seed max cosine similarity",
                     ("layer", "setting", "λ", "direction", "mean"),
                     rows or [("-", "-", "-", "no cells differing only in seed", "-")],
                     "each alive element's largest cosine to the other seed's dictionary"))

    cross, diffs, down = [], [], []
    layers = sorted({p.layer for p in points})
    for layer in layers:
        trio = {p.setting: by_id[p.cell_id] for p, _ in tables.paired(points, layer, "ce")}
        local = trio.get("local")
        for s in ("e2e", "e2e_ds"):
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
    sections.append(("Geometry: cross-type max cosine similarity (Table 2 runs)",
                     ("layer", "direction", "mean"), cross or [("-", "-", "-")], ""))
    sections.append(("Geometry: within-SAE mean differences (Table 2 runs)",
                     ("layer", "difference", "value", "95% bootstrap CI", "paper"),
                     diffs or [("-", "-", "-", "-", "-")],
                     "paper, GPT-2 layer 6: local - e2e_ds = +0.04, local - e2e = +0.166"))
    sections.append(("Downstream reconstruction (Table 2 runs)",
                     ("SAE layer", "setting", "λ", "model layer (resid_pre)", "MSE",
                      "explained variance"), down or [("-",) * 6], ""))
    elapsed = time.perf_counter() - t0
    md = "".join(tables._md(*s) for s in sections)
    md += f"_analysis of {len(dicts)} dictionaries in {elapsed:.1f} s_\n"
    atomic_write_text(out / ANALYSIS_MD, md)
    atomic_write_text(out / ANALYSIS_TEX, "".join(tables._tex(*s) for s in sections))
    _write_h5(out / ANALYSIS_H5, h5, {cid: float(v.mean()) for cid, v in within.items()})
    if within:
        _plot(out, dicts, within, down)
    collect(root, grid)  # tables.md/.tex and summary.csv pick the analysis up
    return out


def within_means(results: Path) -> dict[str, float]:
    """cell id -> mean within-SAE max cosine, from a previous analysis (for summary.csv)."""
    import h5py

    path = results / ANALYSIS_H5
    if not path.exists():
        return {}
    with h5py.File(path, "r") as f:
        return {k: float(v) for k, v in f.attrs.items() if not k.startswith("_")}


def _write_h5(path: Path, arrays: dict[str, np.ndarray], means: dict[str, float]) -> None:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k.replace(" ", ""), data=v)
            for cid, m in means.items():
                f.attrs[cid] = m


def _plot(out: Path, dicts: list[Dictionary], within: dict[str, np.ndarray], down) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({x.point.layer for x in dicts})
    xs = (("l0", "L0"), ("ce_loss_increase", "CE loss increase"), ("alive", "alive elements"))
    fig, axes = plt.subplots(len(layers), 3, figsize=(12, 3.2 * len(layers)), squeeze=False)
    for row, layer in zip(axes, layers, strict=True):
        for ax, (attr, name) in zip(row, xs, strict=True):
            for s, color in COLORS.items():
                pts = [(getattr(x.point, attr), within[x.point.cell_id].mean()) for x in dicts
                       if x.point.layer == layer and x.point.setting == s
                       and x.point.cell_id in within]
                if pts:
                    ax.scatter(*zip(*pts, strict=True), color=color, label=s)
            ax.set_xlabel(name)
            ax.set_ylabel("mean within-SAE max cos")
            ax.set_title(f"layer {layer}")
            ax.grid(alpha=0.3)
        row[0].legend()
    _save(fig, out / "geometry_within.png")

    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 3.5), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        points = [x.point for x in dicts if x.point.layer == layer]
        for p, _ in tables.paired(points, layer, "ce"):
            if p.cell_id in within:
                ax.hist(np.clip(within[p.cell_id], 0, 1), bins=geometry.HIST_BINS,
                        range=(0, 1), histtype="step", color=COLORS[p.setting],
                        label=f"{p.setting} λ {p.lam:g}", density=True)
        ax.set_title(f"layer {layer}: within-SAE max cos (Table 2 runs)")
        ax.set_xlabel("max cosine similarity")
        ax.legend()
    _save(fig, out / "geometry_hist.png")

    if down:
        fig, axes = plt.subplots(2, len(layers), figsize=(4.5 * len(layers), 6.5),
                                 squeeze=False)
        for col, layer in enumerate(layers):
            for s, color in COLORS.items():
                rows = [r for r in down if r[0] == layer and r[1] == s]
                if rows:
                    axes[0, col].plot([r[3] for r in rows], [float(r[4]) for r in rows], "o-",
                                      color=color, label=s)
                    axes[1, col].plot([r[3] for r in rows], [float(r[5]) for r in rows], "o-",
                                      color=color, label=s)
            axes[0, col].set_title(f"SAE at layer {layer} (Table 2 runs)")
            axes[0, col].set_ylabel("MSE to the clean resid_pre")
            axes[0, col].set_yscale("log")
            axes[1, col].set_ylabel("explained variance")
            axes[1, col].set_xlabel("model layer (resid_pre)")
            axes[0, col].legend()
        _save(fig, out / "downstream.png")


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def main(*tokens: str) -> None:
    args = dict(str(t).lstrip("-").partition("=")[::2] for t in tokens)
    unknown = set(args) - {"root", "grid"}
    if unknown or "grid" not in args:
        sys.exit(f"usage: python jobs/analyze.py root=<root> grid=<name> (unknown: {unknown})")
    out = analyze(Path(args.get("root", "runs")), args["grid"])
    print(f"analysis: {out / ANALYSIS_MD} (tables.md includes it), {out}/*.png")


if __name__ == "__main__":
    main(*sys.argv[1:])
