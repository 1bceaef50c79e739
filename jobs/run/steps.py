"""The jobs around the cell arrays, each a function submitit runs (or `python -m
jobs.run.launch step=<name>` on the plain-sbatch path): pre-training, the collector, the
analysis, the auto-interp and evaluation steps."""

from __future__ import annotations

from pathlib import Path

from jobs.analysis.step import analyze
from jobs.plan.grids import GRIDS, pretrain_dir
from jobs.report.collect import collect
from jobs.run.cell import match_threads_to_allocation


def run_pretrain(grid: str, root: str) -> dict:
    """The grid's pre-training job (also `python -m jobs.run.launch step=pretrain ...`)."""
    from e2e.lm import build_lm

    match_threads_to_allocation()
    return build_lm(GRIDS[grid].pretrain, pretrain_dir(Path(root), grid))


def run_collect(grid: str, root: str) -> str:
    return str(collect(Path(root), grid))


def run_analyze(grid: str, root: str, cpus: int = 0) -> str:
    """The analysis step (geometry, downstream reconstruction, multi-dimensional features),
    then the collector again, so the tables include it. Runs `cpus` threads where SLURM does not
    say (a local run: the CPUs its SLURM job would have, not every core)."""
    match_threads_to_allocation(cpus)
    return str(analyze(Path(root), grid))


def run_autointerp(grid: str, root: str, options_json: str = "") -> str:
    """The auto-interp step (then the collector again) with the options it was submitted with
    (a job waiting in the queue keeps them when the grid is submitted again), else the
    grid's autointerp.json (the plain-sbatch step)."""
    from jobs.explain.step import autointerp, options
    from jobs.plan.autointerp import AutoInterp
    from jobs.report.results import existing_grid_dir

    ai = (AutoInterp.from_json(options_json) if options_json
          else options(existing_grid_dir(root, grid), {}))
    return str(autointerp(root, grid, ai))


def run_evals(grid: str, root: str, options_json: str = "") -> str:
    """The evaluation step with the options it was submitted with, else the grid's evals.json
    (the plain-sbatch step)."""
    from jobs.analysis.evals import evaluate
    from jobs.plan.evals import FILE, Evals
    from jobs.report.results import existing_grid_dir

    text = options_json or (existing_grid_dir(root, grid) / FILE).read_text()
    evaluate(root, grid, Evals.from_json(text))
    return str(Path(root) / grid / "results")
