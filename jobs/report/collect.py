"""The collector: the paper's tables and plots from what every cell saved (`collect`); its
command line is `jobs/collect.py`, whose docstring lists what it writes."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from e2e.config import SETTINGS
from e2e.io import atomic_path, atomic_write_text
from jobs.plan.grids import GRIDS
from jobs.report import autointerp as autointerp_report
from jobs.report import compare, convergence, plots, tables
from jobs.report import evals as evals_report
from jobs.report import finetune as finetune_report
from jobs.report import mfr as mfr_report
from jobs.report.results import (
    ANALYSIS_MD,
    ANALYSIS_TEX,
    CellResult,
    existing_grid_dir,
    read_grid,
    to_point,
    within_means,
)


def _write_csv(path: Path, cells: list[CellResult], ai: dict, ev: dict) -> None:
    _write_dict_csv(path, [{**c.row, **autointerp_report.columns(ai.get(c.id)),
                            **(evals_report.columns(ev.get(c.id)) if ev else {})}
                           for c in cells])


def _write_dict_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["cell_id"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _write_h5(path: Path, cells: list[CellResult], ai: dict, ev: dict) -> None:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for c in cells:
                g = f.create_group(c.id)
                g.attrs["status"] = c.status
                g.attrs["reason"] = c.reason
                if c.cfg is not None:
                    g.attrs["config"] = c.cfg.to_json()
                for k, v in c.eval.items():
                    g.create_dataset(k, data=v)
                if c.id in ai:
                    autointerp_report.write_h5(g, ai[c.id])
                if c.id in ev:
                    evals_report.write_h5(g, ev[c.id])


def trained_curves(cells: list[CellResult]) -> dict[int, list[str]]:
    """layer -> the curves of single SAEs trained from scratch there, finished or not (the
    settings in SETTINGS order, then each architecture's): what the headline compares, so a
    grid of local and e2e gets no e2e_ds line and a failed architecture still gets its line.
    Fine-tunes and MFR packs have their own headlines."""
    out: dict[int, set[str]] = {}
    for c in cells:
        if c.cfg is not None and c.cfg.mfr.n_saes == 1 and not c.cfg.init.warm:
            out.setdefault(c.cfg.layer, set()).add(c.curve)
    order = {s: i for i, s in enumerate(SETTINGS)}
    return {layer: sorted(curves, key=lambda s: (order.get(s, len(order)), s))
            for layer, curves in out.items()}


def collect(root: Path | str, grid: str) -> Path:
    """Builds everything under `<root>/<grid>/results/` and returns that folder."""
    grid_dir = existing_grid_dir(root, grid)
    out = grid_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    cells = read_grid(grid_dir, progress=True)
    done = [c for c in cells if c.status == "done"]
    within = within_means(out)
    for c in cells:
        c.within_max_cos_mean = within.get(c.id, "")
    ai = autointerp_report.read(out)  # the auto-interp step's scores, once it has run
    ev = evals_report.read(out)  # the evaluation step's, once it has run
    _write_csv(out / "summary.csv", cells, ai, ev)
    _write_h5(out / "results.h5", cells, ai, ev)
    # The Pareto tables compare single SAEs over λ (each architecture against its own local:
    # `batchtopk/e2e` against `batchtopk/local`); MFR cells and TopK cells also have their own
    # table.
    points = [to_point(c) for c in done if c.cfg.mfr.n_saes == 1]
    mfr_rows = mfr_report.rows(done)
    intervals = compare.PAPER_INTERVALS if grid.startswith("paper") else None
    trained = trained_curves(cells)
    headline = compare.headline(points, trained, intervals) if points or not mfr_rows else []
    if points:
        note = GRIDS[grid].headline_note if grid in GRIDS else ""
        headline += [compare.PAPER_HEADLINE] + ([note] if note else [])
        headline += [compare.KSVD_NOTE] if any(p.setting == "ksvd" for p in points) else []
    headline += finetune_report.headline(points, cells)
    headline += mfr_report.headline(mfr_rows)
    headline += autointerp_report.headline(points, ai)
    headline += evals_report.headline(points, ev)
    changes = {c.id: c.change for c in done}
    flag = convergence.headline_line(changes)
    headline += [flag] if flag else []
    not_done = [c for c in cells if c.status != "done"]
    md, tex = tables.render(points, not_done=[(c.id, c.status, c.reason) for c in not_done],
                            headline=headline, paper=grid.startswith("paper"))
    if (out / ANALYSIS_MD).exists():  # the analysis step's sections, its last run
        md += "\n" + (out / ANALYSIS_MD).read_text()
    if (out / ANALYSIS_TEX).exists():
        tex += (out / ANALYSIS_TEX).read_text()
    if mfr_rows:
        md += "\n" + mfr_report.markdown(mfr_rows)
        _write_dict_csv(out / "mfr.csv", mfr_report.to_csv_rows(mfr_rows))
    if finetune_report.finetuned(cells):
        md += "\n" + finetune_report.markdown(cells)
    if changes:
        md += "\n" + convergence.markdown(changes)
    if ai:
        md += "\n" + autointerp_report.markdown(points, ai)
    if ev:
        md += "\n" + evals_report.markdown(points, ev)
    atomic_write_text(out / "tables.md", md)
    atomic_write_text(out / "tables.tex", tex)
    atomic_write_text(out / "headline.txt", "\n".join(headline) + "\n")
    if points:
        plots.pareto(points, out)
        for family, family_points in compare.families(points).items():
            plots.pareto(family_points, out, suffix=f"_{family.replace('+', '-')}")
        finetune_report.compute_figure(points, cells, out)
        if ai:
            autointerp_report.figure(points, ai, out)
        if ev:
            evals_report.figure(points, ev, out)
    return out
