"""Runs a checked plan through submitit: pre-training, one array of cells, the collector, then
the analysis step (and the auto-interp and evaluation steps after it, when asked for; the
functions each job runs: `jobs.run.steps`).

SLURM: submissions chained by dependencies (the array `afterok` pre-training, the collector
`afterany` the array, the analysis `afterany` the collector), so the tables are built even when
some cells fail. Local: the same jobs as local processes, in waves of `array_parallelism`,
waiting for each, with one status line (`jobs.run.progress`).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import submitit

from jobs import cli
from jobs.plan.evals import job_mem_gb, job_minutes
from jobs.plan.grid import make_packs
from jobs.plan.grids import grid_named
from jobs.run.cell import CellJob
from jobs.run.progress import Progress, fraction_done, machine_speed
from jobs.run.steps import run_analyze, run_autointerp, run_collect, run_evals, run_pretrain


def _executor(plan, cluster: str, name: str, gpus: int, dependency: str | None = None,
              time_min: int | None = None, extra: dict | None = None, mem_gb: int = 0):
    folder = plan.grid_dir / "_submitit" / "%j"
    o = plan.opts
    if cluster == "local":
        ex = submitit.LocalExecutor(folder, python=plan.python)
        ex.update_parameters(timeout_min=max(plan.time_min, 24 * 60), gpus_per_node=0)
        return ex
    ex = submitit.SlurmExecutor(folder, python=plan.python)
    extra = {"requeue": True, **(extra or {})}
    if dependency:
        extra["dependency"] = dependency
    params = dict(job_name=name, time=time_min or plan.time_min, cpus_per_task=plan.cpus,
                  signal_delay_s=120, additional_parameters=extra)
    if o.array_parallelism:
        params["array_parallelism"] = o.array_parallelism
    if gpus:
        params["gres"] = f"gpu:{gpus}"
    if o.partition:
        params["partition"] = o.partition
    if mem_gb or o.mem_gb:
        params["mem"] = f"{mem_gb or o.mem_gb}G"
    ex.update_parameters(**params)
    return ex


def launch(plan) -> None:
    root, grid = str(Path(plan.opts.root).resolve()), plan.grid.name
    if plan.executor == "local":
        _launch_local(plan, root, grid)
    else:
        _launch_slurm(plan, root, grid)


def _launch_local(plan, root: str, grid: str) -> None:
    if (not plan.todo_packs and not plan.needs_pretrain and not _local_child_packs(plan)
            and (plan.grid_dir / "results").exists()):
        print("every cell is done" + ("; the steps after it run what they have not"
                                      if plan.autointerp or plan.evals else ": nothing to do"))
        if plan.autointerp:
            run_autointerp(grid, root, plan.autointerp.to_json())
        if plan.evals:
            run_evals(grid, root, plan.evals.to_json())
        _report(plan.grid_dir / "results")
        return
    _interrupt_on_sigterm()
    ex = _executor(plan, "local", grid, 0)
    started: list = []  # every job this run started: none runs on unsupervised

    def submit(fn, *args):
        # An interrupt between starting a job and recording it would orphan the job: it is
        # raised once the job is recorded. (Not a blocked signal mask: children inherit it.)
        _interrupts["defer"] = True
        try:
            job = ex.submit(fn, *args)
            started.append(job)
        finally:
            _interrupts["defer"] = False
        if _interrupts["pending"]:
            raise KeyboardInterrupt(f"signal {_interrupts['pending']}")
        return job

    try:
        _run_local(plan, root, grid, submit)
    except BaseException:  # Ctrl-C, kill, a closed terminal, wherever it lands
        for job in started:
            job.cancel(check=False)
        raise


def _run_local(plan, root: str, grid: str, submit) -> None:
    speed, line = machine_speed(plan.grid, plan.cells[0].cfg)
    if line:
        print(line, flush=True)
    progress = Progress.for_plan(plan, plan.grid.local_minutes, speed)
    tasks = iter(progress.tasks)
    if plan.needs_pretrain:
        _follow(submit(run_pretrain, grid, root), progress, next(tasks))
    failed: list[str] = []
    step = plan.opts.array_parallelism or 1
    ran = skipped = 0
    # the cells, then the fine-tune stage after every one of them
    for todo in (plan.todo_packs, _local_child_packs(plan)):
        for start in range(0, len(todo), step):
            wave = todo[start:start + step]
            jobs = [submit(CellJob([c.dir for c in pack])) for pack in wave]
            for pack, job in zip(wave, jobs, strict=True):
                try:
                    result = _follow(job, progress, next(tasks))
                    if str(result).startswith("skipped"):  # another run holds its cells
                        progress.close()
                        print(result, flush=True)
                        skipped += 1
                    else:
                        ran += 1
                except Exception:  # a failed task is reported, the others go on
                    failed.append(", ".join(c.id for c in pack))
                    print(f"{failed[-1]}: FAILED (above: the end of its log "
                          f"{job.paths.stderr})", flush=True)
    if skipped and not ran and not failed:  # the other run's collector writes the tables
        progress.close()
        print(f"every cell to train is held by another run into {root}: its collector and "
              "analysis write the tables when it ends", flush=True)
        return
    _follow(submit(run_collect, grid, root), progress, next(tasks))
    results = plan.grid_dir / "results"
    try:
        results = _follow(submit(run_analyze, grid, root, plan.cpus), progress, next(tasks))
    except Exception:  # the tables are written; a part it could not make is one line above
        failed.append("analysis")
        print("analysis: FAILED (the end of its log is above)", flush=True)
    if plan.autointerp:
        try:
            results = _follow(submit(run_autointerp, grid, root, plan.autointerp.to_json()),
                              progress, next(tasks))
        except Exception:  # the tables and browser are written; say so and go on
            failed.append("auto-interp")
            print("auto-interp: FAILED (the end of its log is above)", flush=True)
    if plan.evals:
        try:
            _follow(submit(run_evals, grid, root, plan.evals.to_json()), progress, next(tasks))
        except Exception:  # the tables and browser are written; say so and go on
            failed.append("evals")
            print("evals: FAILED (the end of its log is above)", flush=True)
    progress.close()
    _report(Path(results))
    if failed:
        raise SystemExit(f"{len(failed)} task(s) failed: {failed}")


_interrupts = {"defer": False, "pending": 0}


def _interrupt_on_sigterm() -> None:
    """Ctrl-C, SIGTERM (kill) and SIGHUP (a closed terminal) raise KeyboardInterrupt, so the
    jobs are cancelled; while a job is being started, only once it is recorded."""

    def handler(signum, frame):
        if _interrupts["defer"]:
            _interrupts["pending"] = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _follow(job, progress: Progress, task, poll_s: float = 1.0):
    """Waits for a local job, updating the status line from its progress bar; the job's own
    output stays in its log (`_submitit/<job>/`), printed here only if it fails."""
    progress.start(task)
    while not job.done():
        path = job.paths.stderr
        if path.exists():
            progress.update(task, fraction_done(path.read_text(errors="replace")))
        time.sleep(poll_s)
    progress.finish(task)
    try:
        return job.result()
    except Exception:
        task.failed = True
        progress.close()
        if job.paths.stderr.exists():
            tail = job.paths.stderr.read_text(errors="replace").strip().splitlines()[-20:]
            print("\n".join(tail), file=sys.stderr, flush=True)
        raise


def _local_child_packs(plan) -> list[list]:
    return [p for _, packs in plan.child_tasks(plan.packs) for p in packs if p]


def _submit_children(plan, grid: str, parent_jobs: list) -> list[str]:
    """The fine-tune stage on SLURM: per fraction, an array whose task i waits for parent task
    i alone (`aftercorr`: a child starts as soon as its own parents finish, not the whole
    array; a parent task that fails cancels its children, `--kill-on-invalid-dep`), and one
    array without dependency for children whose parents finished before this submission.
    Returns the job ids the collector waits for."""
    ids, covered = [], set()
    gpus = plan.opts.gpus_per_cell
    for f, packs in plan.child_tasks(plan.todo_packs) if parent_jobs else []:
        if not any(packs):
            continue
        # One task on either side is a plain job, not an array: then afterok on the task
        dep = (f"aftercorr:{parent_jobs[0].job_id.split('_')[0]}"
               if len(packs) > 1 and len(parent_jobs) > 1 else f"afterok:{parent_jobs[0].job_id}")
        ex = _executor(plan, "slurm", f"{grid}-ft{f:g}", gpus, dep,
                       extra={"kill_on_invalid_dep": "yes"})
        with ex.batch():
            jobs = [ex.submit(CellJob([c.dir for c in p])) for p in packs]
        ids.append(jobs[0].job_id.split("_")[0])
        covered |= {c.id for p in packs for c in p}
        print(f"fine-tune array {ids[-1]} (fraction {f:g}): {len(jobs)} tasks, task i after "
              f"cell task i ({dep})")
    free = [c for c in plan.children if c.status != "done" and c.id not in covered]
    if free:
        packs = [[free[i] for i in p] for p in make_packs(
            [c.cfg for c in free], plan.pack_size * len(plan.finetune.settings))]
        ex = _executor(plan, "slurm", f"{grid}-ft", gpus)
        with ex.batch():
            jobs = [ex.submit(CellJob([c.dir for c in p])) for p in packs]
        ids.append(jobs[0].job_id.split("_")[0])
        print(f"fine-tune array {ids[-1]}: {len(jobs)} tasks (their parents are done)")
    return ids


def _launch_slurm(plan, root: str, grid: str) -> None:
    dep = None
    if plan.needs_pretrain:
        pre = _executor(plan, "slurm", f"{grid}-pretrain", 0).submit(run_pretrain, grid, root)
        print(f"pre-training job {pre.job_id}")
        dep = f"afterok:{pre.job_id}"
    ex = _executor(plan, "slurm", f"{grid}-cell", plan.opts.gpus_per_cell, dep)
    with ex.batch():
        jobs = [ex.submit(CellJob([c.dir for c in pack])) for pack in plan.todo_packs]
    after, array_id = "", None
    if jobs:
        array_id = jobs[0].job_id.split("_")[0]
        print(f"cell array {array_id}: {len(jobs)} tasks")
        after = f"afterany:{array_id}"
    elif dep:
        after = dep.replace("afterok", "afterany")
    child_ids = _submit_children(plan, grid, jobs)
    if child_ids:
        after = ":".join([after or "afterany", *child_ids])
    col = _executor(plan, "slurm", f"{grid}-collect", 0, after or None)
    col_job = col.submit(run_collect, grid, root)
    print(f"collector job {col_job.job_id} ({after or 'no dependency'})")
    ana = _executor(plan, "slurm", f"{grid}-analyze", plan.analysis_gpus,
                    f"afterany:{col_job.job_id}", plan.analysis_time_min,
                    mem_gb=plan.analysis_mem_gb)
    last = ana_job = ana.submit(run_analyze, grid, root)
    print(f"analysis job {ana_job.job_id} (afterany:{col_job.job_id})")
    if plan.autointerp:
        ai = plan.autointerp
        last = _executor(plan, "slurm", f"{grid}-autointerp", ai.gpus,
                         f"afterany:{ana_job.job_id}", plan.autointerp_minutes
                         ).submit(run_autointerp, grid, root, ai.to_json())
        print(f"auto-interp job {last.job_id} (afterany:{ana_job.job_id})")
    if plan.evals:
        ev_job = _executor(plan, "slurm", f"{grid}-evals", plan.analysis_gpus,
                           f"afterany:{ana_job.job_id}", job_minutes(plan),
                           mem_gb=job_mem_gb(plan)
                           ).submit(run_evals, grid, root, plan.evals.to_json())
        print(f"evaluation job {ev_job.job_id} (afterany:{ana_job.job_id})")
        if plan.opts.wait:
            ev_job.result()
    if plan.opts.wait:
        _report(Path(last.result()))
    else:
        print(f"results will be in {plan.grid_dir / 'results'} (squeue to follow; wait=true "
              "to block until the analysis has run)")


def _report(results: Path) -> None:
    print("\n" + (results / "headline.txt").read_text().strip())
    print(f"tables: {results / 'tables.md'} (and .tex, summary.csv, results.h5)")
    print(f"plots:  {results / 'pareto_l0.png'}, {results / 'pareto_alive.png'}, "
          "geometry_*.png, downstream.png"
          + (", evals_vs_l0.png" if (results / "evals_vs_l0.png").exists() else ""))
    if (results / "browser.json").exists():
        cost = json.loads((results / "browser.json").read_text())
        print(f"features: {results / 'browser' / 'index.html'} (open it in a browser: "
              f"{cost['pages']} feature pages, {cost['bytes'] / 1e6:.0f} MB, no server)")
    if (results / "autointerp_fig9.png").exists():
        print(f"auto-interp: {results / 'autointerp_fig9.png'}, tables.md's section, "
              "summary.csv's autointerp_* columns")


@dataclass(frozen=True)
class Options:
    step: Literal["pretrain", "collect", "analyze", "autointerp", "evals"]
    grid: str
    root: str = "runs"


def main(*tokens: str) -> None:
    """The plain-sbatch path's steps around the array: pre-training, collector, analysis."""
    o = cli.parse_options(tokens, Options)
    grid = grid_named(o.grid)
    if o.step == "pretrain" and grid.pretrain is None:
        raise cli.ConfigError(f"grid={o.grid} has no pre-training (it reads its model and "
                              "data from the hub or a stage)")
    steps = {"pretrain": run_pretrain, "collect": run_collect, "analyze": run_analyze,
             "autointerp": run_autointerp, "evals": run_evals}
    print(steps[o.step](o.grid, o.root))


if __name__ == "__main__":
    cli.run(main)
