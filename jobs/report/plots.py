"""Every figure of the results folder (matplotlib, Agg, written atomically): the Pareto plots
of the collector and the analysis step's geometry, downstream and multi-dimensional figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from e2e.analysis import geometry
from e2e.io import atomic_path
from jobs.report import compare
from jobs.report.compare import SETTING_COLORS, Point
from jobs.report.results import curve_order

COLORS = SETTING_COLORS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(curve: str) -> str:
    """A curve's marker and line: the settings' `o-`; an architecture's shares its hue pair
    (tab20's dark and light) between settings, so its settings differ in shape too (`^--`
    e2e, `s:` local, `D-.` e2e_ds); fine-tunes `s--`."""
    if curve in SETTING_COLORS:
        return "o-"
    return {"e2e": "^--", "local": "s:", "e2e_ds": "D-."}.get(curve.rpartition("/")[2], "s--")


def curve_colors(curves: set[str]) -> dict:
    """Every plot's colour per curve: the settings' own, then the fine-tune curves (dashed:
    `_style`; `ft-<recipe>-lr<f>-<n>%`) in recipe and fraction order, a shade of tab20 each."""
    extra = sorted(curves - set(SETTING_COLORS), key=curve_order)
    cmap = _pyplot().get_cmap("tab20")
    return {**SETTING_COLORS, **{s: cmap((4 + i) % 20) for i, s in enumerate(extra)}}


def pareto(points: list[Point], out_dir: Path, suffix: str = "") -> list[Path]:
    """CE loss increase against L0 and against alive elements; a panel per layer; files
    `pareto_l0<suffix>.png`, `pareto_alive<suffix>.png`."""
    plt = _pyplot()

    layers = sorted({p.layer for p in points})
    colors = curve_colors({p.setting for p in points})
    extra = set(colors) - set(SETTING_COLORS)
    written = []
    for x_name, fname in (("l0", f"pareto_l0{suffix}.png"),
                          ("alive", f"pareto_alive{suffix}.png")):
        fig, axes = plt.subplots(1, len(layers), figsize=((4.5 + 2 * bool(extra)) * len(layers),
                                                          3.8), squeeze=False)
        for ax, layer in zip(axes[0], layers, strict=True):
            for s, color in colors.items():
                ps = sorted((p for p in points if p.layer == layer and p.setting == s),
                            key=lambda p: getattr(p, x_name))
                if ps:
                    ax.plot([getattr(p, x_name) for p in ps],
                            [p.ce_loss_increase for p in ps],
                            _style(s), color=color, label=s)
            ax.set_title(f"layer {layer}")
            ax.set_xlabel("L0" if x_name == "l0" else "alive dictionary elements")
            ax.set_ylabel("CE loss increase")
            if all(p.ce_loss_increase > 0 for p in points):
                ax.set_yscale("log")  # collapsed runs would flatten every other point
            ax.grid(alpha=0.3)
            ax.legend(**({"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1, 1)}
                         if extra else {}))
        fig.tight_layout()
        path = out_dir / fname
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        written.append(path)
    return written


def geometry_figures(out: Path, dicts: list, within: dict[str, np.ndarray], down) -> None:
    plt = _pyplot()

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
    save(fig, out / "geometry_within.png")

    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 3.5), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        points = [x.point for x in dicts if x.point.layer == layer]
        for p, _ in compare.paired(points, layer, "ce"):
            if p.cell_id in within:
                ax.hist(np.clip(within[p.cell_id], 0, 1), bins=geometry.HIST_BINS,
                        range=(0, 1), histtype="step", color=COLORS[p.setting],
                        label=f"{p.setting} λ {p.lam:g}", density=True)
        ax.set_title(f"layer {layer}: within-SAE max cos (Table 2 runs)")
        ax.set_xlabel("max cosine similarity")
        ax.legend()
    save(fig, out / "geometry_hist.png")

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
        save(fig, out / "downstream.png")


def save(fig, path: Path, dpi: int = 100) -> None:
    """Lays `fig` out, writes it as a PNG atomically and closes it."""
    plt = _pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)



def multidim_figures(out: Path, scatter, tops) -> None:
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(5, 4))
    for s, color in COLORS.items():
        pts = [(m, sep) for setting, m, sep in scatter if setting == s]
        if pts:
            ax.scatter(*zip(*pts, strict=True), color=color, label=s, s=12)
    ax.invert_xaxis()
    ax.set_xlabel("mixture index M (reducible ->)")
    ax.set_ylabel("separability index S (bits)")
    ax.legend()
    save(fig, out / "multidim_scatter.png")
    if tops:
        fig, axes = plt.subplots(1, len(tops), figsize=(4 * len(tops), 4), squeeze=False)
        for ax, (x, cl, proj, toks, tok) in zip(axes[0], tops, strict=True):
            ax.scatter(proj[:, 0], proj[:, 1], s=4, alpha=0.5)
            for i in range(0, len(proj), max(1, len(proj) // 25)):
                ax.annotate(tok.decode([toks[i]]).strip()[:8], proj[i, :2], fontsize=6)
            ax.set_title(f"L{x.point.layer} {x.point.setting}: cluster {cl}", fontsize=9)
            ax.set_xlabel("PC 1")
            ax.set_ylabel("PC 2")
        save(fig, out / "multidim_top.png")


