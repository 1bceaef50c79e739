"""The paper's tables, headline and Pareto plots from finished cells' eval scalars.

Pairing is by rule, never by hand-picked run ids: in each layer the reference is the e2e run
whose nearest local and e2e_ds runs are closest to it (in CE loss increase for Table 2, in L0
for Table 3); each pair's relative mismatch is printed and flagged above 20%.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# Braun et al. 2024, Tables 2 and 3 (GPT-2 small): (layer, setting) -> (λ, L0, alive, CE↑).
PAPER_SIMILAR_CE = {
    (2, "local"): (0.8, 73.5, 41_000, 0.016), (2, "e2e"): (0.5, 33.4, 22_000, 0.020),
    (2, "e2e_ds"): (10, 36.2, 18_000, 0.015), (6, "local"): (4, 69.4, 26_000, 0.144),
    (6, "e2e"): (3, 27.5, 22_000, 0.145), (6, "e2e_ds"): (50, 36.8, 15_000, 0.124),
    (10, "local"): (6, 162.7, 33_000, 0.122), (10, "e2e"): (1.5, 62.3, 25_000, 0.131),
    (10, "e2e_ds"): (1.75, 70.2, 25_000, 0.144),
}
PAPER_SIMILAR_L0 = {
    (2, "local"): (4, 18.4, 18_000, 0.101), (2, "e2e"): (1.5, 18.6, 20_000, 0.043),
    (2, "e2e_ds"): (35, 17.9, 15_000, 0.039), (6, "local"): (6, 42.8, 21_000, 0.228),
    (6, "e2e"): (1.5, 39.7, 25_000, 0.099), (6, "e2e_ds"): (50, 36.8, 15_000, 0.124),
    (10, "local"): (10, 74.9, 28_000, 0.202), (10, "e2e"): (1.5, 62.3, 25_000, 0.131),
    (10, "e2e_ds"): (1.75, 70.2, 25_000, 0.144),
}
# Table 5 (shrinkage, ||x_hat|| / ||x|| at the hook): (positions > 0, position 0), Table 2 runs.
PAPER_L2_RATIO = {
    (2, "local"): (0.98, 1.00), (2, "e2e"): (0.67, 0.16), (2, "e2e_ds"): (0.74, 0.14),
    (6, "local"): (0.92, 1.00), (6, "e2e"): (0.31, 0.11), (6, "e2e_ds"): (0.56, 0.99),
    (10, "local"): (0.91, 1.00), (10, "e2e"): (0.15, 0.08), (10, "e2e_ds"): (0.32, 0.99),
}
PAPER_TIME = {2: ("3h45m", "12h24m", "12h30m"), 6: ("4h45m", "11h20m", "11h24m"),
              10: ("5h19m", "10h12m", "10h20m")}

COLUMNS = ("setting", "λ", "L0", "alive", "grad norm", "CE loss increase")
SETTING_COLORS = {"local": "tab:blue", "e2e": "tab:orange", "e2e_ds": "tab:green",
                  "ksvd": "tab:red"}


@dataclass(frozen=True)
class Point:
    cell_id: str
    layer: int
    setting: str
    lam: float
    l0: float
    alive: float
    grad_norm: float
    ce_loss_increase: float
    train_time_s: float
    l2_ratio_pos0: float = float("nan")
    l2_ratio_pos_gt0: float = float("nan")
    seed: int = 0


MISMATCH_FLAG = 0.20  # a pair further apart than this is flagged, not shown as "similar"


def _value(key: str):
    return (lambda p: p.ce_loss_increase) if key == "ce" else (lambda p: p.l0)


def _mismatch(p: Point, ref: Point, key: str) -> float:
    """Relative difference of p from the reference in CE loss increase or L0."""
    v = _value(key)
    return abs(v(p) - v(ref)) / abs(v(ref)) if v(ref) else float("inf")


def reference(points: list[Point], layer: int, key: str = "ce") -> Point | None:
    """The e2e run whose best match in every other setting is closest (the largest relative
    mismatch over the settings is smallest); ties go to the middle of the λ sweep."""
    e2e = sorted((p for p in points if p.layer == layer and p.setting == "e2e"),
                 key=lambda p: p.lam)
    if not e2e:
        return None
    others = [[p for p in points if p.layer == layer and p.setting == s]
              for s in ("local", "e2e_ds")]
    others = [c for c in others if c]

    def score(i: int) -> tuple[float, float]:
        worst = max((min(_mismatch(p, e2e[i], key) for p in c) for c in others), default=0.0)
        return worst, abs(i - (len(e2e) - 1) / 2)

    return e2e[min(range(len(e2e)), key=score)]


def paired(points: list[Point], layer: int, key: str) -> list[tuple[Point, float]]:
    """The reference run plus, per other setting (ksvd included, though it never chooses the
    reference), the run nearest to it in `key` (ce or l0), each with its relative mismatch
    from the reference."""
    ref = reference(points, layer, key)
    if ref is None:
        return []
    out = []
    for setting in ("local", "e2e", "e2e_ds", "ksvd"):
        if setting == "e2e":
            out.append((ref, 0.0))
            continue
        cands = [p for p in points if p.layer == layer and p.setting == setting]
        if cands:
            best = min(cands, key=lambda p: _mismatch(p, ref, key))
            out.append((best, _mismatch(best, ref, key)))
    return out


def curve(points: list[Point], layer: int, setting: str, x: str = "l0"
          ) -> tuple[np.ndarray, np.ndarray]:
    """(x, CE increase) of a setting's runs, sorted by x (`l0` or `alive`)."""
    ps = sorted((p for p in points if p.layer == layer and p.setting == setting),
                key=lambda p: getattr(p, x))
    return np.array([getattr(p, x) for p in ps]), np.array([p.ce_loss_increase for p in ps])


def ce_ratio_at_equal_l0(points: list[Point], layer: int, setting: str, n: int = 64,
                         x: str = "l0", interval: tuple[float, float] | None = None,
                         base: str = "local") -> tuple[float, float, float] | None:
    """`setting`'s CE loss increase as a fraction of `base`'s (local's) at equal L0 (or alive
    elements).

    Both curves are interpolated linearly in x at n points spanning the range they share (cut
    to `interval` when given, as the paper's L0 300 -> 50); the result is the geometric mean of
    the pointwise ratios, so that no part of the range (e.g. a collapsed run's huge CE increase
    at tiny L0) dominates. Returns (ratio, low, high), or None without a shared range or where
    a CE increase is not positive.
    """
    xl, yl = curve(points, layer, base, x)
    xs, ys = curve(points, layer, setting, x)
    if len(xl) < 2 or len(xs) < 2:
        return None
    lo, hi = max(xl[0], xs[0]), min(xl[-1], xs[-1])
    if interval is not None:
        lo, hi = max(lo, interval[0]), min(hi, interval[1])
    if not lo < hi:
        return None
    grid = np.linspace(lo, hi, n)
    local, other = np.interp(grid, xl, yl), np.interp(grid, xs, ys)
    if (local <= 0).any() or (other <= 0).any():
        return None
    return float(np.exp(np.mean(np.log(other / local)))), float(lo), float(hi)


def per_seed(points: list[Point], layer: int, setting: str, base: str = "local") -> str:
    """" (per seed: s0 82%, s1 91%)": `ce_ratio_at_equal_l0` within each seed that both curves
    trained, where there are two or more (the headline's spread); "" with one seed."""
    seeds = sorted({p.seed for p in points if p.layer == layer and p.setting in (setting, base)})
    if len(seeds) < 2:
        return ""
    parts = []
    for s in seeds:
        r = ce_ratio_at_equal_l0([p for p in points if p.seed == s], layer, setting, base=base)
        parts.append(f"s{s} {100 * r[0]:.0f}%" if r else f"s{s} not comparable")
    return f" (per seed: {', '.join(parts)})"


def not_comparable(points: list[Point], layer: int, setting: str, base: str) -> str:
    """Why `ce_ratio_at_equal_l0` (over L0, no interval) gave no ratio, in words: too few runs,
    L0 ranges that share no stretch of positive width (each curve's range), or a CE loss
    increase that is not positive. Runs whose L0 is not a number are not counted."""
    numbered = [p for p in points if p.l0 == p.l0]
    xl, _ = curve(numbered, layer, base)
    xs, _ = curve(numbered, layer, setting)
    if len(xl) < 2 or len(xs) < 2:
        return f"needs >= 2 finished runs of each ({base} {len(xl)}, {setting} {len(xs)})"
    if not max(xl[0], xs[0]) < min(xl[-1], xs[-1]):
        return (f"their L0 ranges share no interval ({base} {xl[0]:.1f}-{xl[-1]:.1f}, "
                f"{setting} {xs[0]:.1f}-{xs[-1]:.1f})")
    return "a CE loss increase is not positive over their shared L0 range"


# The paper's number, printed beside ours on every grid of ReLU SAEs.
PAPER_HEADLINE = ("paper (GPT-2 small, layer 6, L0 300 -> 50): e2e's CE loss increase is < 45% "
                  "of local's at equal L0 (Braun et al. 2024, Fig. 1)")


# Printed under the headline when a grid has ksvd cells: what its comparison means.
KSVD_NOTE = ("ksvd: a dictionary fitted to the activations by DB-KSVD; its codes come from "
             "matching pursuit with a least-squares refit (signed, an optimisation per token), "
             "not from one linear map and a ReLU: at equal L0 its encoder is the stronger one")


# The paper's headline intervals (layer 6): L0 300 -> 50, and alive elements 23k-35k.
PAPER_INTERVALS = {6: {"l0": (50.0, 300.0), "alive": (23_000.0, 35_000.0)}}


def base_curve(curve: str, base: str = "local") -> str:
    """The curve another is compared with: `base` of the same architecture (`local`,
    `batchtopk/local`)."""
    family, _, _ = curve.rpartition("/")
    return f"{family}/{base}" if family else base


def families(points: list[Point]) -> dict[str, list[Point]]:
    """Points of each architecture other than ReLU (`batchtopk/e2e` ...), under their plain
    setting names, so each can be drawn and tabled as the paper's are."""
    out: dict[str, list[Point]] = {}
    for p in points:
        family, _, setting = p.setting.rpartition("/")
        if family:
            out.setdefault(family, []).append(replace(p, setting=setting))
    return out


def headline(points: list[Point], curves: dict[int, list[str]], intervals: dict | None = None
             ) -> list[str]:
    """Per layer and each of its `curves` (the settings and `<arch>/<setting>` curves the grid
    trained there, finished or not), its CE loss increase as a fraction of its own local's at
    equal L0 over the shared range, or why there is none; with `intervals` ({layer:
    {"l0"|"alive": (low, high)}}) also over those (the paper's), cut to where both curves have
    runs."""
    if not points:
        return ["no finished cells yet"]
    lines = []
    names = {"l0": "L0", "alive": "alive elements"}
    for layer in sorted(curves):
        for setting in curves[layer]:
            base = base_curve(setting)
            if setting == base:
                continue
            r = ce_ratio_at_equal_l0(points, layer, setting, base=base)
            if r is None:
                lines.append(f"layer {layer}: {setting} vs {base}: not comparable: "
                             + not_comparable(points, layer, setting, base))
            else:
                ratio, lo, hi = r
                lines.append(f"layer {layer}: at equal L0 ({lo:.1f}-{hi:.1f}), {setting}'s "
                             f"CE loss increase is {100 * ratio:.0f}% of {base}'s"
                             + per_seed(points, layer, setting, base))
            for x, want in (intervals or {}).get(layer, {}).items():
                r = ce_ratio_at_equal_l0(points, layer, setting, x=x, interval=want, base=base)
                where = f"the paper's interval of {names[x]} {want[0]:g}-{want[1]:g}"
                if r is None:
                    lines.append(f"layer {layer}: {setting} vs {base} over {where}: no runs "
                                 "of both cover it")
                else:
                    ratio, lo, hi = r
                    cut = "" if (lo, hi) == want else f", covered {lo:.0f}-{hi:.0f}"
                    lines.append(f"layer {layer}: over {where}{cut}, {setting}'s CE loss "
                                 f"increase is {100 * ratio:.0f}% of {base}'s")
    return lines


def _row(p: Point) -> tuple:
    grad_norm = "-" if np.isnan(p.grad_norm) else f"{p.grad_norm:.3g}"  # ksvd: no gradient
    return (p.setting, f"{p.lam:g}", f"{p.l0:.1f}", f"{p.alive:.0f}", grad_norm,
            f"{p.ce_loss_increase:.4f}")


def _fmt_mismatch(p: Point, m: float) -> str:
    if p.setting == "e2e":
        return "reference"
    return f"{m:.0%}" + (" (not similar)" if m > MISMATCH_FLAG else "")


def markdown_table(title: str, header, rows, note: str = "") -> str:
    out = [f"## {title}", "", "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out + (["", f"_{note}_"] if note else []) + ["", ""])


def latex_table(title: str, header, rows, note: str = "") -> str:
    esc = lambda s: str(s).replace("_", r"\_").replace("λ", r"$\lambda$")  # noqa: E731
    lines = [r"\begin{table}[h]", r"\centering", r"\begin{tabular}{" + "l" * len(header) + "}",
             r"\toprule", " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(x) for x in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(title)}. {esc(note)}}}",
              r"\end{table}", ""]
    return "\n".join(lines)


def _fmt_time(s: float) -> str:
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m{int(s % 60):02d}s"


def render(points: list[Point], not_done: list[tuple[str, str, str]], headline: list[str],
           paper: bool) -> tuple[str, str]:
    """tables.md and tables.tex: Tables 1, 2, 3, 5 and 6 plus the cells left out."""
    layers = sorted({p.layer for p in points})
    header = ("layer",) + COLUMNS + ("mismatch",)
    sections = []
    rule = ("reference: the e2e run whose nearest {what} in local and e2e_ds is closest; "
            "the other settings: the run with the nearest {what}; mismatch: relative "
            f"difference from the reference, flagged above {MISMATCH_FLAG:.0%}")
    ce_rule = rule.format(what="CE loss increase")
    l0_rule = rule.format(what="L0")

    def rows(key: str) -> list[tuple]:
        return [(layer,) + _row(p) + (_fmt_mismatch(p, m),)
                for layer in layers for p, m in paired(points, layer, key)]

    t2, t3 = rows("ce"), rows("l0")
    mid = 6 if 6 in layers else (layers[len(layers) // 2] if layers else None)
    t1 = [r for r in t2 if r[0] == mid]
    t6 = []
    t6_settings = ("local", "e2e", "e2e_ds") + (
        ("ksvd",) if any(p.setting == "ksvd" for p in points) else ())
    for layer in layers:
        times = []
        for s in t6_settings:
            ts = [p.train_time_s for p in points if p.layer == layer and p.setting == s]
            times.append(_fmt_time(float(np.mean(ts))) if ts else "-")
        t6.append((layer, *times))
    sections.append(("Table 1: one layer of Table 2", header, t1, f"layer {mid}; " + ce_rule))
    sections.append(("Table 2: runs with similar CE loss increase", header, t2, ce_rule))
    sections.append(("Table 3: runs with similar L0", header, t3, l0_rule))
    t5 = []
    for layer in layers:
        for p, _ in paired(points, layer, "ce"):
            paper_l2 = PAPER_L2_RATIO.get((layer, p.setting), ("-", "-")) if paper else ()
            t5.append((layer, p.setting, f"{p.lam:g}", f"{p.l2_ratio_pos_gt0:.2f}",
                       f"{p.l2_ratio_pos0:.2f}", *paper_l2))
    t5_header = ("layer", "setting", "λ", "L2 ratio, pos > 0", "L2 ratio, pos 0") + (
        ("paper, pos > 0", "paper, pos 0") if paper else ())
    sections.append(("Table 5: shrinkage of the Table 2 runs", t5_header, t5,
                     "mean ||x_hat|| / ||x|| at the hook over eval tokens"))
    sections.append(("Table 6: mean training time per cell", ("layer",) + t6_settings,
                     t6, "wall time of the training loop, resumes included"
                     + ("; ksvd: caching the activations and the fit" if "ksvd" in t6_settings
                        else "")))
    if paper:
        ref = [(layer, s) + tuple(PAPER_SIMILAR_CE[(layer, s)]) for layer, s in
               sorted(PAPER_SIMILAR_CE)]
        sections.append(("Paper (GPT-2 small), Table 2", ("layer", "setting", "λ", "L0", "alive",
                                                          "CE loss increase"), ref, ""))
        ref3 = [(layer, s) + tuple(PAPER_SIMILAR_L0[(layer, s)]) for layer, s in
                sorted(PAPER_SIMILAR_L0)]
        sections.append(("Paper (GPT-2 small), Table 3", ("layer", "setting", "λ", "L0", "alive",
                                                          "CE loss increase"), ref3, ""))
        sections.append(("Paper, Table 6 (one A100)", ("layer", "local", "e2e", "e2e_ds"),
                         [(k, *v) for k, v in PAPER_TIME.items()], ""))
    sections.append(("Cells left out of the tables", ("cell", "status", "reason"),
                     not_done or [("-", "-", "none: every cell finished")], ""))
    md = "# Results\n\n" + "\n".join(f"- {h}" for h in headline) + "\n\n"
    md += "".join(markdown_table(*s) for s in sections)
    tex = "% generated by jobs/collect.py\n" + "".join(latex_table(*s) for s in sections)
    return md, tex
