"""The small-scale study behind `tiny`: when does e2e beat local at equal L0 on the small LM?

Each variant is the `tiny` grid with `key=value` overrides, run through `jobs/submit.py` exactly
as a user would, in its own root (`<root>/<variant>/`); all roots share one pre-trained LM
through a symlink, so it trains once. The study reads back what the collector reads (every
finished cell's eval and convergence) and writes `<root>/study.md`, `study.csv` and
`study.png`: per variant, e2e's CE loss increase as a fraction of local's at equal L0 (the
collector's headline number), the L0 range it is taken over, and how many cells the
convergence report flags. Learning rates are also compared across variants, so each setting
can be judged at its own best rate, as the paper swept it.

    python benchmarks/study_tiny.py root=/work/study [only=lr8e-3,layer1]

A rerun skips finished cells (the submit path does), so the study can be stopped and resumed.
"""

from __future__ import annotations

import csv
import itertools
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jobs import cli
from jobs.plan.grids import pretrain_dir
from jobs.report import compare, convergence
from jobs.report.results import read_grid, to_point

REPO = Path(__file__).resolve().parent.parent

# local and e2e only (e2e_ds doubles the cost); λ spans chosen so both curves cover L0 ≈ 15-150.
SWEEP = ["settings=[local,e2e]", "lambdas.local=[0.3,1,4,12]",
         "lambdas.e2e=[0.01,0.03,0.1,0.3]", "pack=8"]
# At lr 3e-2 both curves move to small L0; these λ reach L0 ≈ 15-100 there.
LOW_LAMBDAS = ["lambdas.local=[0.1,0.3,1,4]", "lambdas.e2e=[0.003,0.01,0.03,0.1]"]
# variant -> overrides on top of SWEEP; the first is `tiny` as it was (600 steps, lr 2e-3).
# The learning rate was swept first; the other axes vary around the best one found (3e-2).
VARIANTS: dict[str, list[str]] = {
    "lr2e-3": ["optim.lr=2e-3"],
    "lr8e-3": ["optim.lr=8e-3"],
    "lr3e-2": ["optim.lr=3e-2"],
    "lr3e-2-lowlam": ["optim.lr=3e-2", *LOW_LAMBDAS],
    "lr3e-2-2x-steps": ["optim.lr=3e-2", *LOW_LAMBDAS, "optim.n_samples=9600"],
    "lr3e-2-layer1": ["optim.lr=3e-2", *LOW_LAMBDAS, "layers=[1]"],
    "lr3e-2-layer3": ["optim.lr=3e-2", *LOW_LAMBDAS, "layers=[3]"],
    "lr3e-2-ratio32": ["optim.lr=3e-2", *LOW_LAMBDAS, "sae.dict_size_to_input_ratio=32"],
}


def run_variant(root: Path, name: str, shared_lm: Path) -> float:
    """Runs (or resumes) one variant through the submit path; returns its wall time in s."""
    vroot = root / name
    link = pretrain_dir(vroot, "tiny")
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(shared_lm.resolve(), target_is_directory=True)
    cmd = [sys.executable, str(REPO / "jobs" / "submit.py"), "grid=tiny", f"root={vroot}",
           "executor=local", "wait=true", *SWEEP, *VARIANTS[name]]
    t0 = time.time()
    with open(vroot / "submit.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return time.time() - t0


def variant_results(root: Path, name: str) -> tuple[list[compare.Point], dict]:
    cells = [c for c in read_grid(root / name / "tiny") if c.status == "done"]
    return [to_point(c) for c in cells], {c.id: c.change for c in cells}


def ratio(local: list[compare.Point], other: list[compare.Point]) -> tuple | None:
    """e2e's CE increase as a fraction of local's at equal L0 (the collector's number), for
    curves that may come from different variants (e.g. each setting at its own lr)."""
    pts = [p for p in local if p.setting == "local"] + [p for p in other if p.setting == "e2e"]
    layers = {p.layer for p in pts}
    return compare.ce_ratio_at_equal_l0(pts, layers.pop(), "e2e") if len(layers) == 1 else None


def _curve(points: list[compare.Point], setting: str) -> str:
    """`L0/CE increase` of a setting's runs, by L0."""
    ps = sorted((p for p in points if p.setting == setting), key=lambda p: p.l0)
    return ", ".join(f"{p.l0:.0f}/{p.ce_loss_increase:.4f}" for p in ps)


def report(root: Path, names: list[str]) -> str:
    rows, results = [], {}
    for name in names:
        points, changes = variant_results(root, name)
        results[name] = points
        r = ratio(points, points)
        flagged = sum(convergence.not_converged(ch) for ch in changes.values())
        rows.append({
            "variant": name, "overrides": " ".join(VARIANTS[name]), "cells": len(points),
            "e2e_over_local": f"{100 * r[0]:.0f}%" if r else "n/a",
            "l0_range": f"{r[1]:.0f}-{r[2]:.0f}" if r else "",
            "not_converged": f"{flagged}/{len(changes)}",
            "local_l0_ce": _curve(points, "local"), "e2e_l0_ce": _curve(points, "e2e"),
            "train_min": f"{sum(p.train_time_s for p in points) / 60:.1f}"})
    with open(root / "study.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    keys = ("variant", "e2e_over_local", "l0_range", "not_converged", "local_l0_ce",
            "e2e_l0_ce", "train_min")
    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    md += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    lr_names = [n for n in names if n.startswith("lr") and n.count("-") == 1]  # lr only
    if len(lr_names) > 1:
        md += ["", "Each setting at its own learning rate (e2e over local at equal L0; rows: "
               "local's lr, columns: e2e's):", "",
               "| local \\ e2e | " + " | ".join(lr_names) + " |", "|---|" + "---|" * len(lr_names)]
        for a in lr_names:
            cells = []
            for b in lr_names:
                r = ratio(results[a], results[b])
                cells.append(f"{100 * r[0]:.0f}% ({r[1]:.0f}-{r[2]:.0f})" if r else "n/a")
            md.append(f"| {a} | " + " | ".join(cells) + " |")
    text = "\n".join(md) + "\n"
    (root / "study.md").write_text(text)
    plot(root, names, results)
    return text


def plot(root: Path, names: list[str], results: dict[str, list[compare.Point]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False,
                             sharey=True)
    for ax, name in itertools.zip_longest(axes.flat, names):
        if name is None:
            ax.set_visible(False)
            continue
        for s, color in (("local", "tab:blue"), ("e2e", "tab:orange")):
            ps = sorted((p for p in results[name] if p.setting == s), key=lambda p: p.l0)
            ax.plot([p.l0 for p in ps], [p.ce_loss_increase for p in ps], "o-", color=color,
                    label=s)
        ax.set_title(name, fontsize=9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.set_xlabel("L0")
    axes[0, 0].set_ylabel("CE loss increase")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(root / "study.png", dpi=90)
    plt.close(fig)


@dataclass(frozen=True)
class Options:
    root: str = "runs-study"
    only: tuple[str, ...] | None = None  # variants to run (default: all)
    report_only: bool = False


def main(*tokens: str) -> None:
    o = cli.parse_options(tokens, Options)
    root, only, report_only = Path(o.root).resolve(), o.only or (), o.report_only
    names = [n for n in VARIANTS if not only or n in only]
    unknown = set(only) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
    shared_lm = pretrain_dir(root / "_lm", "tiny")
    if not (shared_lm / "DONE").exists():
        subprocess.run([sys.executable, "-m", "jobs.run.launch", "step=pretrain", "grid=tiny",
                        f"root={root / '_lm'}"], check=True, cwd=REPO)
    for name in names:
        if not report_only:
            print(f"{name}: {run_variant(root, name, shared_lm) / 60:.1f} min", flush=True)
        print(report(root, [n for n in names if (root / n / "tiny").exists()]), flush=True)


if __name__ == "__main__":
    cli.run(main)
