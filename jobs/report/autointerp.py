"""Auto-interp scores where people look: summary.csv columns, results.h5, a tables.md section,
the paper's Fig. 9, a headline line and the feature browser's data.

The step (`jobs.explain.step`) writes one `results/autointerp/<cell>.json` per dictionary:
{"explainer", "scorer", "budget", "features": {id: {"explanation", <scorer>: score, ...}},
"scores": {<scorer>: [mean, lo, hi]} (bootstrap 95% interval; None where nothing was scored),
"failed": {<scorer>: prompts without a usable answer}, "unanswered": requests, "key": what the
scores depend on, None until every request was answered}. The collector reads them on every
run, so a rerun keeps them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from e2e.autointerp import SCORERS
from jobs.report import compare
from jobs.report.compare import SETTING_COLORS, Point

FOLDER = "autointerp"
FIGURE = "autointerp_fig9.png"


def records_dir(results: Path) -> Path:
    """Where the analysis's browser pass saves the records (`e2e.autointerp.records`)."""
    return results / FOLDER / "records"


def read(results: Path) -> dict[str, dict]:
    """cell id -> its scores file, for every dictionary scored."""
    folder = results / FOLDER
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} \
        if folder.is_dir() else {}


def columns(entry: dict | None) -> dict:
    """summary.csv's columns: each scorer's mean and interval ("" where not scored)."""
    out = {}
    for s in SCORERS:
        m = [("" if v is None else v)
             for v in (entry or {}).get("scores", {}).get(s, [None] * 3)]
        out.update({f"autointerp_{s}": m[0], f"autointerp_{s}_lo": m[1],
                    f"autointerp_{s}_hi": m[2]})
    return out


def write_h5(group, entry: dict) -> None:
    """Per-feature scores under `<cell>/autointerp/` (datasets `features`, one per scorer)
    with the mean and interval as attributes, and the models."""
    g = group.create_group("autointerp")
    g.attrs["explainer"], g.attrs["scorer"] = entry["explainer"], entry["scorer"]
    feats = sorted(entry["features"], key=int)
    g.create_dataset("features", data=[int(f) for f in feats])
    for s, mci in entry["scores"].items():
        d = g.create_dataset(s, data=[_nan(entry["features"][f].get(s)) for f in feats])
        d.attrs["mean"], d.attrs["lo"], d.attrs["hi"] = (_nan(v) for v in mci)


def _nan(v) -> float:
    return math.nan if v is None else float(v)


def _fmt(m: list) -> str:
    """A score [mean, lo, hi] (None where nothing was scored) as text."""
    return "–" if m is None or m[0] is None else f"{m[0]:.3f} [{m[1]:.3f}, {m[2]:.3f}]"


def markdown(points: list[Point], ai: dict[str, dict]) -> str:
    """Every scored dictionary, then the paper's pairing (Fig. 9) per layer."""
    if not ai:
        return ""
    any_entry = next(iter(ai.values()))
    scorers = list(any_entry["scores"])
    lines = ["## Auto-interpretability", "",
             f"Explainer {any_entry['explainer']}, scorer {any_entry['scorer']}; mean score "
             "over the scored features with its bootstrap 95% interval (detection and fuzzing: "
             "balanced accuracy, 0.5 = chance; simulation: correlation).", "",
             "| dictionary | features | " + " | ".join(scorers) + " |",
             "|---|---|" + "---|" * len(scorers)]
    for cid, e in sorted(ai.items()):
        lines.append(f"| {cid} | {len(e['features'])} | "
                     + " | ".join(_fmt(e["scores"].get(s)) for s in scorers) + " |")
    for key, title in (("ce", "similar CE loss increase"), ("l0", "similar L0")):
        for layer in sorted({p.layer for p in points}):
            pairs = [(p, m) for p, m in compare.paired(points, layer, key) if p.cell_id in ai]
            if len(pairs) > 1:
                lines += ["", f"Layer {layer}, {title} (Fig. 9):", ""]
                lines += [f"- {p.setting} ({p.cell_id}, mismatch {m:.0%}): "
                          + ", ".join(f"{s} {_fmt(ai[p.cell_id]['scores'].get(s))}"
                                      for s in scorers) for p, m in pairs]
    return "\n".join(lines) + "\n"


def headline(points: list[Point], ai: dict[str, dict]) -> list[str]:
    """One line per layer: each setting's first scorer at similar CE loss increase."""
    out = []
    for layer in sorted({p.layer for p in points}):
        pairs = [p for p, _ in compare.paired(points, layer, "ce") if p.cell_id in ai]
        if pairs:
            s = next(iter(ai[pairs[0].cell_id]["scores"]))
            out.append(f"layer {layer}: auto-interp {s} at similar CE loss increase: " + ", ".join(
                f"{p.setting} {_fmt(ai[p.cell_id]['scores'].get(s))}" for p in pairs))
    return out


def figure(points: list[Point], ai: dict[str, dict], out: Path) -> Path | None:
    """Fig. 9: per scorer (rows) and pairing (columns: similar CE, similar L0), each setting's
    mean score with its 95% interval, per layer."""
    layers = sorted({p.layer for p in points})
    got = {k: {la: [p for p, _ in compare.paired(points, la, k) if p.cell_id in ai]
               for la in layers} for k in ("ce", "l0")}
    if not any(v for d in got.values() for v in d.values()):
        return None
    scorers = list(next(iter(ai.values()))["scores"])
    from jobs.report.plots import _pyplot, save

    plt = _pyplot()
    fig, axes = plt.subplots(len(scorers), 2, figsize=(9, 3 * len(scorers)), squeeze=False)
    for r, s in enumerate(scorers):
        for c, (key, title) in enumerate((("ce", "similar CE loss increase"),
                                          ("l0", "similar L0"))):
            ax = axes[r][c]
            for i, la in enumerate(layers):
                for j, p in enumerate(got[key][la]):
                    m, lo, hi = (_nan(v) for v in ai[p.cell_id]["scores"].get(s, [None] * 3))
                    ax.errorbar(i + 0.2 * (j - 1), m, yerr=[[m - lo], [hi - m]], fmt="o",
                                color=SETTING_COLORS.get(p.setting, "gray"), capsize=3,
                                label=p.setting if i == 0 else None)
            ax.set_xticks(range(len(layers)), [f"layer {la}" for la in layers])
            ax.set_title(f"{s}, {title}", fontsize=9)
            if r == 0 and c == 0:
                ax.legend(fontsize=8)
    path = out / FIGURE
    save(fig, path, dpi=120)
    return path


def browser_data(results: Path, put) -> None:
    """The browser's `autointerp` (per dictionary: scores, models) and `autointerp/<cell>`
    (per feature: explanation and scores) data files; `put(name, key, value)`."""
    ai = read(results)
    put("autointerp", "autointerp", {c: {"scores": e["scores"], "explainer": e["explainer"],
                                         "scorer": e["scorer"]} for c, e in ai.items()})
    for cid, e in ai.items():
        put(f"autointerp-{cid}", f"autointerp/{cid}", e["features"])
