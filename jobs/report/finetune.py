"""The fine-tune stage in the results (docs/finetune.md): its headline, its table, and the
figure of CE loss increase at a fixed L0 against training compute.

Compute is each cell's training FLOPs (`e2e.train.cost`), a fine-tune's including its parent's.
"Equal L0" is the tables' rule: curves over λ interpolated linearly in L0 on their shared range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jobs.report import compare, tables
from jobs.report.compare import Point
from jobs.report.results import CellResult, curve_order


def finetuned(cells: list[CellResult], costed: bool = False) -> list[CellResult]:
    """Finished warm-started cells; `costed`: only those whose parent cell is in the grid (a
    SAELens parent's cost is unknown, so it has no place on a cost axis)."""
    return [c for c in cells if c.status == "done" and c.cfg.init.warm
            and (c.parent is not None or not costed)]


def _mean_cost(cells: list[CellResult], layer: int, curve: str,
               attr: str = "total_flops") -> float:
    """The mean cost of a curve's finished cells (a fine-tune's with its parent's)."""
    fl = [getattr(c, attr) for c in cells if c.status == "done" and c.cfg.layer == layer
          and c.curve == curve]
    return float(np.mean(fl)) if fl else float("nan")


def headline(points: list[Point], cells: list[CellResult]) -> list[str]:
    """Per layer and fine-tune curve: its CE loss increase as a fraction of local's and of
    e2e's (of its architecture) at equal L0, and its total compute (parent included) as a
    fraction of e2e's."""
    lines = []
    for layer, curve in sorted({(c.cfg.layer, c.curve) for c in finetuned(cells, True)},
                               key=lambda x: (x[0], curve_order(x[1]))):
        parts = []
        e2e = compare.base_curve(curve, "e2e")  # of the same architecture
        has_e2e = any(p.layer == layer and p.setting == e2e for p in points)
        for base in (compare.base_curve(curve), e2e)[:2 if has_e2e else 1]:
            r = compare.ce_ratio_at_equal_l0(points, layer, curve, base=base)
            parts.append(f"{r[0]:.0%} of {base}'s (L0 {r[1]:.1f}-{r[2]:.1f})"
                         f"{compare.per_seed(points, layer, curve, base)}" if r else
                         f"not comparable with {base} (no shared L0 range)")
        line = f"layer {layer}: {curve}: CE loss increase at equal L0 {', '.join(parts)}"
        if has_e2e:  # a grid without e2e cells has nothing to set the cost against
            cost = _mean_cost(cells, layer, curve) / _mean_cost(cells, layer, e2e)
            wall = (_mean_cost(cells, layer, curve, "total_time_s")
                    / _mean_cost(cells, layer, e2e, "total_time_s"))
            line += (f"; cost, parent included, {cost:.2f}x e2e's from scratch in FLOPs, "
                     f"{wall:.2f}x in training time")
        lines.append(line)
    return lines


def markdown(cells: list[CellResult]) -> str:
    """A row per fine-tuned cell, beside its parent."""
    rows = []
    for c in sorted(finetuned(cells), key=lambda c: (c.cfg.layer, c.curve, c.cfg.lam)):
        p = c.parent
        e2e = _mean_cost(cells, c.cfg.layer, "e2e")
        rows.append((c.cfg.layer, c.curve, f"{c.cfg.lam:g}",
                     f"{p.eval['l0']:.1f}" if p else "?", f"{c.eval['l0']:.1f}",
                     f"{p.eval['ce_loss_increase']:.4f}" if p else "?",
                     f"{c.eval['ce_loss_increase']:.4f}", f"{c.flops:.3g}",
                     f"{c.total_flops:.3g}" if p else "?",
                     f"{c.total_flops / e2e:.2f}" if p else "?",
                     f"{c.total_time_s / 60:.1f}", c.cfg.init.from_cell or c.cfg.init.from_path))
    header = ("layer", "curve", "λ", "parent L0", "L0", "parent CE↑", "CE↑", "FLOPs",
              "total FLOPs", "total / e2e", "total min", "parent")
    return tables.markdown_table(
        "Fine-tuned from local cells", header, rows,
        "CE↑: CE loss increase; FLOPs: training (`e2e/train/cost.py`); total: with the "
        "parent's; e2e: the mean of the layer's e2e cells from scratch.")


def _at_l0(points: list[tuple[float, float]], l0: float) -> float:
    """CE loss increase at `l0` on a curve of (L0, CE) points; NaN outside its range."""
    if len(points) < 2:
        return float("nan")
    xs, ys = zip(*sorted(points), strict=True)
    return float(np.interp(l0, xs, ys)) if xs[0] <= l0 <= xs[-1] else float("nan")


def _trajectory(cells: list[CellResult], layer: int, curve: str, l0: float):
    """(compute, CE at `l0`) along training of a from-scratch curve: at each eval step, the
    cells over λ interpolated at `l0`; compute grows linearly with the step."""
    cs = [c for c in cells if c.status == "done" and c.cfg.layer == layer and c.curve == curve
          and len(c.history.get("step", ())) > 0]
    if len(cs) < 2:
        return [], []
    steps = sorted(set.intersection(*(set(c.history["step"].tolist()) for c in cs)))
    xs, ys = [], []
    for step in steps:
        pts = [(float(c.history["l0"][i]), float(c.history["ce_loss_increase"][i]))
               for c in cs for i in np.flatnonzero(c.history["step"] == step)[:1]]
        y = _at_l0(pts, l0)
        if np.isfinite(y) and step > 0:
            xs.append(np.mean([c.flops for c in cs]) * step / cs[0].cfg.optim.n_steps)
            ys.append(y)
    return xs, ys


def compute_figure(points: list[Point], cells: list[CellResult], out_dir: Path) -> Path | None:
    """`ce_vs_compute.png`: per layer, CE loss increase at one L0 (the middle of local's and
    e2e's shared range) against training FLOPs: local and e2e along their training, each
    fine-tune recipe at its fractions (parent included). Where a fine-tune curve meets e2e's
    is the answer."""
    from jobs.report.plots import SETTING_COLORS, _pyplot, save

    layers = sorted({c.cfg.layer for c in finetuned(cells, True)})
    if not layers:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(layers), figsize=(5.5 * len(layers), 4), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        xl, _ = compare.curve(points, layer, "local")
        xe, _ = compare.curve(points, layer, "e2e")
        if len(xl) < 2 or len(xe) < 2 or max(xl[0], xe[0]) >= min(xl[-1], xe[-1]):
            continue
        l0 = float(np.sqrt(max(xl[0], xe[0]) * min(xl[-1], xe[-1])))
        for curve in ("local", "e2e"):
            xs, ys = _trajectory(cells, layer, curve, l0)
            ax.plot(xs, ys, "o-", color=SETTING_COLORS[curve], label=f"{curve} (over training)")
        recipes = sorted({c.curve.rsplit("-", 1)[0] for c in finetuned(cells, True)
                          if c.cfg.layer == layer and "/" not in c.curve})  # ReLU's
        for i, recipe in enumerate(recipes):
            curves = sorted({c.curve for c in finetuned(cells, True) if c.cfg.layer == layer
                             and c.curve.startswith(recipe + "-")}, key=curve_order)
            xs = [_mean_cost(cells, layer, cv) for cv in curves]
            ys = [_at_l0([(p.l0, p.ce_loss_increase) for p in points
                          if p.layer == layer and p.setting == cv], l0) for cv in curves]
            ax.plot(xs, ys, "s--", color=f"C{4 + i}", label=f"local → {recipe[3:]}, "
                    f"({', '.join(cv.rsplit('-', 1)[1] for cv in curves)})")
        ax.set_title(f"layer {layer}: CE loss increase at L0 {l0:.1f}")
        ax.set_xlabel("training FLOPs (a fine-tune's include its parent's)")
        ax.set_ylabel("CE loss increase")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, out_dir / "ce_vs_compute.png")
    return out_dir / "ce_vs_compute.png"
