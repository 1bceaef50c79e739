"""`python jobs/submit.py grid=<name> [key=value ...]`: a grid becomes one array of cell jobs.

Everything is checked before anything is written or submitted (`jobs.plan.make`): keys,
values, grid name, every cell's config, existing cell folders whose config differs, and the
auto-interp endpoint. Then, through
submitit, the same jobs run on SLURM (one array, after the pre-training job if the grid has
one, followed by the collector and the analysis with `afterany`) or as local processes
(`jobs.run.launch`).
"""

from __future__ import annotations

from jobs import cli
from jobs.explain.endpoint import check_endpoint
from jobs.plan.describe import format_plan
from jobs.plan.make import make_plan
from jobs.plan.stages import run_stages
from jobs.run.launch import launch
from jobs.run.manifest import plain_sbatch_commands, write_configs


def main(*tokens: str) -> None:
    plan = make_plan([str(t) for t in tokens])
    check_endpoint(plan)  # one line before anything is written or sent
    print(format_plan(plan), flush=True)
    if plan.opts.dry_run:
        return
    if plan.opts.stage:
        run_stages(plan.stages)
    write_configs(plan)
    if not plan.opts.submit:
        print(plain_sbatch_commands(plan))
        return
    launch(plan)


if __name__ == "__main__":
    cli.run(main)
