"""The paper's tables, in Markdown and LaTeX, from the comparisons of `jobs.report.compare`
(the paper's own numbers beside ours)."""

from __future__ import annotations

import numpy as np

from jobs.report.compare import MISMATCH_FLAG, Point, paired

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
