"""The comparisons the paper makes, on points (a finished cell's eval scalars): pairs at similar
CE loss increase (Table 2) or L0 (Table 3), the CE loss increase at equal L0 along each
setting's curve, and the headline with its notes.

Pairing is by rule, never by hand-picked run ids: in each layer the reference is the e2e run
whose nearest local and e2e_ds runs are closest to it (in CE loss increase for Table 2, in L0
for Table 3); each pair's relative mismatch is printed and flagged above 20%.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

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
