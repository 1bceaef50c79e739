"""A written plan: cell configs, manifest.txt and the plain `sbatch` commands over it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from e2e.io import atomic_write_text, cell_paths, stored_config
from jobs.plan.autointerp import FILE as AUTOINTERP_FILE
from jobs.plan.evals import FILE as EVALS_FILE
from jobs.plan.evals import job_mem_gb, job_minutes
from jobs.plan.make import Plan


def write_configs(plan: Plan) -> None:
    """Each cell's config.json, and `manifest.txt` (one pack per line: its cell folders,
    space-separated) for the plain `sbatch slurm/array.sbatch` path."""
    root = Path(plan.opts.root).resolve()
    for c in plan.cells + plan.children:
        paths = cell_paths(c.dir)
        # a folder of before 2026-12-07 gets today's form: its paths inside the root relative
        if c.rewrite or (c.status != "done" and not paths.config.exists()):
            atomic_write_text(paths.config, stored_config(c.cfg, c.dir, root).to_json())
    _write_manifest(plan.grid_dir / "manifest.txt", plan.packs)
    if plan.autointerp:
        atomic_write_text(plan.grid_dir / AUTOINTERP_FILE, plan.autointerp.to_json())
    if plan.evals:
        atomic_write_text(plan.grid_dir / EVALS_FILE, plan.evals.to_json())
    for f, packs in plan.child_tasks(plan.packs):
        if packs:  # a fraction whose children are all done has no array
            _write_manifest(plan.grid_dir / f"manifest-ft{f:g}.txt", packs)


def _write_manifest(path: Path, packs: list) -> None:
    """One pack per line (its cell folders); `-` for an empty task of a fine-tune array."""
    text = "".join((" ".join(str(c.dir) for c in p) or "-") + "\n" for p in packs)
    if not path.exists() or path.read_text() != text:  # a rerun writes nothing
        atomic_write_text(path, text)


def plain_sbatch_commands(plan: Plan) -> str:
    """The plain-sbatch recipe for a written plan: pre-training if needed, the array over
    manifest.txt (one task per pack), the collector after it, then the analysis step."""
    root, grid = Path(plan.opts.root).resolve(), plan.grid.name
    n = len(plan.packs)
    env = f"E2E_CONTAINER={plan.container}" + (
        f" E2E_IMAGE={shlex.quote(plan.image)}" if plan.container != "none" else
        f" E2E_PYTHON={shlex.quote(sys.executable)}")

    def wrap(step: str) -> str:  # pre-training and collector run in the cells' container too
        return shlex.quote(f"{plan.python} -m jobs.run.launch step={step} grid={grid} root={root}")

    lines = ["written: cell configs and " + str(plan.grid_dir / "manifest.txt") +
             "; submit from the repository root with:"]
    dep = ""
    if plan.needs_pretrain:
        lines.append(f"pre=$(sbatch --parsable --job-name={grid}-pretrain --wrap "
                     f"{wrap('pretrain')})")
        dep = " --dependency=afterok:$pre"
    # overrides the script's `#SBATCH --gres=gpu:1`; `none` clears it (cells on CPU)
    cell_gres = f"--gres={f'gpu:{plan.opts.gpus_per_cell}' if plan.opts.gpus_per_cell else 'none'}"
    lines.append(f"arr=$({env} sbatch --parsable --array=0-{n - 1}{dep} {cell_gres} "
                 f"--time={plan.time_min} --cpus-per-task={plan.cpus} slurm/array.sbatch "
                 f"{plan.grid_dir / 'manifest.txt'})")
    after = "$arr"
    lines += ["all="] if plan.children else []
    for f, packs in [(f, p) for f, p in plan.child_tasks(plan.packs) if p]:
        lines.append(f"ft=$({env} sbatch --parsable --array=0-{len(packs) - 1} "
                     f"--dependency=aftercorr:$arr --kill-on-invalid-dep=yes {cell_gres} "
                     f"--time={plan.time_min} --cpus-per-task={plan.cpus} slurm/array.sbatch "
                     f"{plan.grid_dir / f'manifest-ft{f:g}.txt'}); all=\"$all:$ft\"")
        after = "$arr$all"
    lines.append(f"col=$(sbatch --parsable --dependency=afterany:{after} "
                 f"--job-name={grid}-collect --wrap {wrap('collect')})")
    gres = f"--gres=gpu:{plan.analysis_gpus} " if plan.analysis_gpus else ""
    after_ana = plan.autointerp or plan.evals
    lines.append(f"{'ana=$(' if after_ana else ''}sbatch "
                 f"{'--parsable ' if after_ana else ''}--dependency=afterany:$col "
                 f"--job-name={grid}-analyze {gres}--time={plan.analysis_time_min} "
                 f"--mem={plan.analysis_mem_gb}G --wrap "
                 f"{wrap('analyze')}{')' if after_ana else ''}")
    if plan.autointerp:
        gres = f"--gres=gpu:{plan.autointerp.gpus} " if plan.autointerp.gpus else ""
        lines.append(f"sbatch --dependency=afterany:$ana --job-name={grid}-autointerp {gres}"
                     f"--time={plan.autointerp_minutes} --wrap {wrap('autointerp')}")
    if plan.evals:
        gres = f"--gres=gpu:{plan.analysis_gpus} " if plan.analysis_gpus else ""
        lines.append(f"sbatch --dependency=afterany:$ana --job-name={grid}-evals {gres}"
                     f"--time={job_minutes(plan)} --mem={job_mem_gb(plan)}G "
                     f"--wrap {wrap('evals')}")
    return "\n".join(lines)
