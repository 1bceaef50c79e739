"""The evaluation step's results where people look: summary.csv and results.h5 columns, a
tables.md section (every dictionary; then, per layer, each setting against local at equal L0,
with the seeds' spread), a headline line per layer and a figure (each metric against L0, one
curve per setting).

The step (`jobs.analysis.evals`) writes `results/evals/<eval_type_id>/<cell>_eval_results.json`
in SAEBench's schema and layout (its graphing finds them by that suffix and keys them by the
name before it); the collector reads them on every run, so a rerun keeps them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jobs.report.compare import Point

FOLDER = "evals"
SUFFIX = "_eval_results.json"  # SAEBench's: `<release>_<sae_id>_eval_results.json`
FIGURE = "evals_vs_l0.png"
CORE, PROBING, ABSORPTION = "core", "sparse_probing_sae_probes", "absorption_first_letter"
# summary.csv column -> (file, category, SAEBench's name)
METRICS = {
    "saebench_ce_loss_score": (CORE, "model_performance_preservation", "ce_loss_score"),
    "saebench_kl_div_score": (CORE, "model_behavior_preservation", "kl_div_score"),
    "saebench_explained_variance": (CORE, "reconstruction_quality", "explained_variance"),
    "saebench_frac_alive": (CORE, "misc_metrics", "frac_alive"),
    "probing_sae_top_1_acc": (PROBING, "sae", "sae_top_1_test_accuracy"),
    "probing_sae_top_5_acc": (PROBING, "sae", "sae_top_5_test_accuracy"),
    "probing_resid_top_1_acc": (PROBING, "llm_top_k", "llm_top_1_test_accuracy"),
    "probing_resid_dense_acc": (PROBING, "llm", "llm_test_accuracy"),
    "absorption_fraction": (ABSORPTION, "mean", "mean_absorption_fraction_score"),
    "absorption_full": (ABSORPTION, "mean", "mean_full_absorption_score"),
    "absorption_split_features": (ABSORPTION, "mean", "mean_num_split_features"),
}
# What the comparisons at equal L0 and the figure show (the baselines are the same for every
# dictionary of a layer: they are in the per-dictionary table).
COMPARED = ("saebench_ce_loss_score", "saebench_explained_variance", "probing_sae_top_1_acc",
            "probing_sae_top_5_acc", "absorption_fraction", "absorption_full")


def result_path(results: Path, cell: str, eval_type: str) -> Path:
    """Where a dictionary's result of one evaluation lies, as SAEBench lays them out."""
    return results / FOLDER / eval_type / f"{cell}{SUFFIX}"


def read(results: Path) -> dict[str, dict[str, float]]:
    """cell id -> its columns (those its files hold), for every dictionary evaluated."""
    files: dict[str, dict[str, dict]] = {}  # cell -> eval type -> its file
    for f in sorted((results / FOLDER).glob(f"*/*{SUFFIX}")):
        files.setdefault(f.name[:-len(SUFFIX)], {})[f.parent.name] = json.loads(f.read_text())
    out: dict[str, dict[str, float]] = {}
    for cell, by_type in files.items():
        row = {}
        for col, (name, cat, key) in METRICS.items():
            v = by_type.get(name, {}).get("eval_result_metrics", {}).get(cat, {}).get(key)
            if v is not None and v != -1:
                row[col] = float(v)
        if row:
            out[cell] = row
    return out


def columns(entry: dict | None) -> dict:
    """summary.csv's columns ("" where not evaluated)."""
    return {c: (entry or {}).get(c, "") for c in METRICS}


def write_h5(group, entry: dict) -> None:
    """The columns under `<cell>/evals/` as attributes."""
    g = group.create_group("evals")
    for k, v in entry.items():
        g.attrs[k] = v


def diff_at_equal_l0(points: list[Point], ev: dict, layer: int, setting: str, col: str,
                     base: str = "local", n: int = 64) -> tuple[float, float, float] | None:
    """The mean of setting's metric minus base's over the L0 range both curves span, each
    interpolated linearly in L0 at n points; (difference, low L0, high L0) or None."""
    def curve(s):
        ps = sorted((p for p in points if p.layer == layer and p.setting == s
                     and col in ev.get(p.cell_id, {})), key=lambda p: p.l0)
        return np.array([p.l0 for p in ps]), np.array([ev[p.cell_id][col] for p in ps])

    (xb, yb), (xs, ys) = curve(base), curve(setting)
    if len(xb) < 2 or len(xs) < 2:
        return None
    lo, hi = max(xb[0], xs[0]), min(xb[-1], xs[-1])
    if not lo < hi:
        return None
    grid = np.linspace(lo, hi, n)
    return float(np.mean(np.interp(grid, xs, ys) - np.interp(grid, xb, yb))), lo, hi


def _compared(points: list[Point], ev: dict, layer: int, col: str) -> list[str]:
    """'setting +0.012 (s0 +0.010, s1 +0.015)' for each setting against local at `layer`."""
    out = []
    settings = sorted({p.setting for p in points if p.layer == layer} - {"local"})
    for s in settings:
        r = diff_at_equal_l0(points, ev, layer, s, col)
        if r is None:
            continue
        seeds = sorted({p.seed for p in points if p.layer == layer and p.setting == s})
        per = [(k, diff_at_equal_l0([p for p in points if p.seed == k], ev, layer, s, col))
               for k in seeds] if len(seeds) > 1 else []
        spread = ", ".join(f"s{k} {d[0]:+.3f}" if d else f"s{k} –" for k, d in per)
        out.append(f"{s} {r[0]:+.3f} (L0 {r[1]:.0f}-{r[2]:.0f}"
                   + (f"; per seed: {spread})" if spread else ")"))
    return out


def markdown(points: list[Point], ev: dict[str, dict]) -> str:
    """Every evaluated dictionary, then each setting against local at equal L0 per layer."""
    if not ev:
        return ""
    cols = [c for c in METRICS if any(c in e for e in ev.values())]
    lines = ["## SAEBench's core, sparse probing and absorption (docs/evals.md)", "",
             "SAEBench's core (`ce_loss_score`: the fraction of the CE loss recovered against "
             "zero-ablation), sae-probes' sparse probing (mean test accuracy over the "
             "datasets of the top-k latents; `resid`: the same on the raw residual, top-1 "
             "dimension and dense) and SAEBench's first-letter absorption (mean absorption "
             "fraction, full-absorption rate and feature splits over the letters the model "
             "spells; lower absorption is better).", "",
             "| dictionary | layer | setting | L0 | " + " | ".join(cols) + " |",
             "|---|---|---|---|" + "---|" * len(cols)]
    for p in sorted((p for p in points if p.cell_id in ev),
                    key=lambda p: (p.layer, p.setting, p.seed, p.l0)):
        e = ev[p.cell_id]
        lines.append(f"| {p.cell_id} | {p.layer} | {p.setting} | {p.l0:.1f} | "
                     + " | ".join(f"{e[c]:.3f}" if c in e else "–" for c in cols) + " |")
    for layer in sorted({p.layer for p in points}):
        rows = [(c, _compared(points, ev, layer, c)) for c in COMPARED]
        rows = [(c, r) for c, r in rows if r]
        if rows:
            lines += ["", f"Layer {layer}, against local at equal L0 (setting minus local):",
                      ""] + [f"- {c}: " + "; ".join(r) for c, r in rows]
    return "\n".join(lines) + "\n"


def headline(points: list[Point], ev: dict[str, dict]) -> list[str]:
    """Per layer: the top-1 sparse probing accuracy and the absorption fraction of each
    setting minus local's at equal L0."""
    out = []
    for layer in sorted({p.layer for p in points}):
        for col, what in (("probing_sae_top_1_acc", "sparse probing top-1 accuracy"),
                          ("absorption_fraction", "absorption fraction")):
            r = _compared(points, ev, layer, col)
            if r:
                out.append(f"layer {layer}: {what} at equal L0, minus local's: "
                           + "; ".join(r))
    return out


def figure(points: list[Point], ev: dict[str, dict], out: Path) -> Path | None:
    """Each compared metric (columns) against L0 per layer (rows), one curve per setting."""
    layers = sorted({p.layer for p in points if p.cell_id in ev})
    cols = [c for c in COMPARED if any(c in e for e in ev.values())]
    if not layers or not cols:
        return None
    from jobs.report.plots import _pyplot, _style, curve_colors, save

    plt = _pyplot()
    colors = curve_colors({p.setting for p in points})
    fig, axes = plt.subplots(len(layers), len(cols), figsize=(3.6 * len(cols), 3 * len(layers)),
                             squeeze=False)
    for r, layer in enumerate(layers):
        for c, col in enumerate(cols):
            ax = axes[r][c]
            ax.set_title(f"layer {layer}: {col}", fontsize=8)
            evaluated = [p for p in points if p.layer == layer and col in ev.get(p.cell_id, {})]
            if not evaluated:  # this evaluation did not run at this layer
                ax.text(0.5, 0.5, "not evaluated", ha="center", va="center", color="gray",
                        transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            for s in sorted({p.setting for p in evaluated}, key=list(colors).index):
                ps = sorted((p for p in evaluated if p.setting == s), key=lambda p: (p.seed, p.l0))
                for seed in sorted({p.seed for p in ps}):
                    q = [p for p in ps if p.seed == seed]
                    ax.plot([p.l0 for p in q], [ev[p.cell_id][col] for p in q], _style(s),
                            color=colors[s], alpha=1 if seed == ps[0].seed else 0.5,
                            label=s if seed == ps[0].seed else None)
            ax.set_xscale("log")
            ax.set_xlabel("L0")
    # one legend of every curve, in the first panel that has some
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()
               if not h.get_label().startswith("_")}
    first = next(ax for ax in axes.flat if ax.get_lines())
    first.legend(handles.values(), handles.keys(), fontsize=7)
    path = out / FIGURE
    save(fig, path, dpi=110)
    return path


def browser_data(results: Path, put) -> None:
    """The browser's `evals` data file (cell id -> its columns); `put(name, key, value)`."""
    put("evals", "evals", read(results))
