"""The MFR table and headline (Marks et al. 2024): TopK SAEs trained alone, side by side, or with
the mutual-feature penalty, aggregated over seeds.

A configuration is everything but the seed; its row holds the mean ± sd over seeds of each
cell's value (itself the mean over the cell's SAEs). The headline compares every MFR
configuration (`mfr.coeff` > 0) with its baseline: the same configuration at coefficient 0.
"""

from __future__ import annotations

import math

import numpy as np

COLUMNS = (  # (metric in metrics.h5, column title)
    ("mmcs_true", "MMCS to truth"),
    ("recovered_true", "recovered (cos>0.9)"),
    ("mfr_similarity/symmetric_max", "cross-SAE sim (sym. max)"),
    ("mfr_similarity/hungarian", "cross-SAE sim (Hungarian)"),
    ("mse", "MSE"),
    ("explained_variance", "expl. var."),
    ("l0", "L0"),
    ("alive_dict_elements", "alive"),
    ("ce_loss_increase", "CE loss increase"),
)


def is_mfr_cell(cfg) -> bool:
    return cfg.sae.activation == "topk" or cfg.mfr.n_saes > 1


def config_key(cfg) -> tuple:
    m = cfg.mfr
    return (cfg.source, cfg.layer, cfg.loss.setting, cfg.sae.k, cfg.sae.dict_size_to_input_ratio,
            m.n_saes, m.similarity, m.coeff)


def _label(key: tuple) -> str:
    source, layer, setting, k, ratio, n, sim, coeff = key
    where = "synthetic" if source == "synthetic" else f"L{layer} {setting}"
    return f"{where}, k {k}, {ratio:g}x, {n} SAE{'s' if n > 1 else ''}, MFR {coeff:g}" + (
        f" ({sim})" if coeff else "")


def rows(cells) -> list[dict]:
    """One row per configuration of finished MFR/TopK cells: {metric: (mean, sd, n)}."""
    groups: dict[tuple, list[dict[str, float]]] = {}
    for c in cells:
        if c.status == "done" and is_mfr_cell(c.cfg):
            hook = c.cfg.hook_name
            values = {**c.eval, "mse": c.eval.get(f"mse/{hook}", math.nan),
                      "explained_variance": c.eval.get(f"explained_variance/{hook}", math.nan)}
            groups.setdefault(config_key(c.cfg), []).append(values)
    out = []
    for key in sorted(groups):
        row = {"key": key, "label": _label(key), "seeds": len(groups[key])}
        for metric, _ in COLUMNS:
            vals = np.array([g.get(metric, math.nan) for g in groups[key]], dtype=float)
            vals = vals[np.isfinite(vals)]
            row[metric] = ((float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1
                            else math.nan, len(vals)) if len(vals) else None)
        out.append(row)
    return out


def _fmt(v) -> str:
    if v is None:
        return ""
    mean, sd, _ = v
    return f"{mean:.4g}" + ("" if math.isnan(sd) else f" ± {sd:.2g}")


def markdown(table: list[dict]) -> str:
    cols = [(m, t) for m, t in COLUMNS if any(r[m] is not None for r in table)]
    lines = ["## MFR: TopK SAEs alone, side by side, and with the mutual-feature penalty", "",
             "| configuration | seeds | " + " | ".join(t for _, t in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for r in table:
        lines.append(f"| {r['label']} | {r['seeds']} | "
                     + " | ".join(_fmt(r[m]) for m, _ in cols) + " |")
    lines += ["", "_mean ± sd over seeds; each cell's value is the mean over its SAEs. MMCS to "
              "truth: mean cosine of the Hungarian matching to the true features; recovered: "
              "share of true features with an element at cosine > 0.9; cross-SAE similarity: "
              "mean over pairs of the cell's SAEs._", ""]
    return "\n".join(lines)


def headline(table: list[dict]) -> list[str]:
    """MFR against its baseline (coefficient 0), per configuration, whatever the sign."""
    by_key = {r["key"]: r for r in table}
    lines = []
    for r in table:
        key = r["key"]
        if key[-1] == 0:
            continue
        base = by_key.get(key[:-1] + (0.0,))
        if base is None:
            continue
        parts = []
        for metric, name in (("mmcs_true", "MMCS to truth"),
                             ("recovered_true", "recovered features"), ("mse", "MSE"),
                             ("ce_loss_increase", "CE loss increase")):
            if r[metric] and base[metric]:
                a, b = base[metric][0], r[metric][0]
                change = f" ({100 * (b - a) / abs(a):+.0f}%)" if a else ""
                parts.append(f"{name} {a:.4g} -> {b:.4g}{change}")
        if parts:
            lines.append(f"MFR vs baseline, {r['label']}: " + ", ".join(parts))
    return lines


def to_csv_rows(table: list[dict]) -> list[dict]:
    out = []
    for r in table:
        row = {"configuration": r["label"], "seeds": r["seeds"]}
        for metric, _ in COLUMNS:
            v = r[metric]
            row[f"{metric}_mean"] = "" if v is None else v[0]
            row[f"{metric}_sd"] = "" if v is None or math.isnan(v[1]) else v[1]
        out.append(row)
    return out
