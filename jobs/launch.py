"""Runs a checked plan through submitit: pre-training, one array of cells, then the collector.

SLURM: three submissions chained by dependencies (the array `afterok` pre-training, the
collector `afterany` the array), so the tables are built even when some cells fail. Local: the
same jobs as local processes, in waves of `array_parallelism`, waiting for each.
"""

from __future__ import annotations

import signal
from pathlib import Path

import submitit

from jobs.cell import CellJob, match_threads_to_allocation
from jobs.collect import collect
from jobs.grids import GRIDS, pretrain_dir


def run_pretrain(grid: str, root: str) -> dict:
    """The grid's pre-training job (also `python -m jobs.launch pretrain <grid> <root>`)."""
    from e2e.lm import pretrain

    match_threads_to_allocation()
    return pretrain(GRIDS[grid].pretrain, pretrain_dir(Path(root), grid))


def run_collect(grid: str, root: str) -> str:
    return str(collect(Path(root), grid))


def run_analyze(grid: str, root: str) -> str:
    """The analysis step (geometry, downstream reconstruction); re-runs the collector."""
    from jobs.analyze import analyze

    match_threads_to_allocation()
    return str(analyze(Path(root), grid))


def _executor(plan, cluster: str, name: str, gpus: int, dependency: str | None = None,
              time_min: int | None = None):
    folder = plan.grid_dir / "_submitit" / "%j"
    o = plan.opts
    if cluster == "local":
        ex = submitit.LocalExecutor(folder, python=plan.python)
        ex.update_parameters(timeout_min=max(plan.time_min, 24 * 60), gpus_per_node=0)
        return ex
    ex = submitit.SlurmExecutor(folder, python=plan.python)
    extra = {"requeue": True}
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
    if o.mem_gb:
        params["mem"] = f"{o.mem_gb}G"
    ex.update_parameters(**params)
    return ex


def launch(plan) -> None:
    root, grid = str(Path(plan.opts.root).resolve()), plan.grid.name
    if plan.executor == "local":
        _launch_local(plan, root, grid)
    else:
        _launch_slurm(plan, root, grid)


def _launch_local(plan, root: str, grid: str) -> None:
    if not plan.todo_packs and not plan.needs_pretrain and (plan.grid_dir / "results").exists():
        print("nothing to do: every cell is done")
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
    if plan.needs_pretrain:
        print("pre-training ...", flush=True)
        _follow(submit(run_pretrain, grid, root))
    todo = plan.todo_packs
    failed = []
    step = plan.opts.array_parallelism or 1
    for start in range(0, len(todo), step):
        wave = todo[start:start + step]
        jobs = [submit(CellJob([c.dir for c in pack])) for pack in wave]
        for k, (pack, job) in enumerate(zip(wave, jobs, strict=True)):
            ids = ", ".join(c.id for c in pack)
            try:
                _follow(job)
                print(f"[{start + k + 1}/{len(todo)}] {ids}: done", flush=True)
            except Exception as e:  # a failed task is reported, the others go on
                failed.append(ids)
                print(f"{ids}: FAILED ({str(e).strip().splitlines()[-1]})", flush=True)
    _follow(submit(run_collect, grid, root))
    _report(Path(_follow(submit(run_analyze, grid, root))))
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


def _follow(job, poll_s: float = 1.0):
    """Waits for a local job, copying its stderr (progress bars, errors) to ours as it grows."""
    import sys
    import time

    shown = 0
    while True:
        finished = job.done()
        path = job.paths.stderr
        if path.exists():
            text = path.read_text(errors="replace")
            sys.stderr.write(text[shown:])
            sys.stderr.flush()
            shown = len(text)
        if finished:
            return job.result()
        time.sleep(poll_s)


def _launch_slurm(plan, root: str, grid: str) -> None:
    dep = None
    if plan.needs_pretrain:
        pre = _executor(plan, "slurm", f"{grid}-pretrain", 0).submit(run_pretrain, grid, root)
        print(f"pre-training job {pre.job_id}")
        dep = f"afterok:{pre.job_id}"
    ex = _executor(plan, "slurm", f"{grid}-cell", plan.opts.gpus_per_cell, dep)
    with ex.batch():
        jobs = [ex.submit(CellJob([c.dir for c in pack])) for pack in plan.todo_packs]
    after = ""
    if jobs:
        array_id = jobs[0].job_id.split("_")[0]
        print(f"cell array {array_id}: {len(jobs)} tasks")
        after = f"afterany:{array_id}"
    elif dep:
        after = dep.replace("afterok", "afterany")
    col = _executor(plan, "slurm", f"{grid}-collect", 0, after or None)
    col_job = col.submit(run_collect, grid, root)
    print(f"collector job {col_job.job_id} ({after or 'no dependency'})")
    ana = _executor(plan, "slurm", f"{grid}-analyze", 0, f"afterany:{col_job.job_id}",
                    plan.analysis_time_min)
    ana_job = ana.submit(run_analyze, grid, root)
    print(f"analysis job {ana_job.job_id} (afterany:{col_job.job_id})")
    if plan.opts.wait:
        _report(Path(ana_job.result()))
    else:
        print(f"results will be in {plan.grid_dir / 'results'} (squeue to follow; wait=true "
              "to block until the collector has run)")


def _report(results: Path) -> None:
    print("\n" + (results / "headline.txt").read_text().strip())
    print(f"tables: {results / 'tables.md'} (and .tex, summary.csv, results.h5)")
    print(f"plots:  {results / 'pareto_l0.png'}, {results / 'pareto_alive.png'}, "
          "geometry_*.png, downstream.png")


if __name__ == "__main__":  # the plain-sbatch path's pre-training and collector steps
    import sys

    steps = {"pretrain": run_pretrain, "collect": run_collect, "analyze": run_analyze}
    usage = "usage: python -m jobs.launch pretrain|collect|analyze <grid> <root>"
    if len(sys.argv) != 4 or sys.argv[1] not in steps:
        sys.exit(usage)
    step = steps[sys.argv[1]]
    print(step(sys.argv[2], sys.argv[3]))
