"""`python jobs/stage.py grid=paper root=/shared/e2e`: copy a grid's model and the exact token
rows its cells read to `<root>/_sources/<hash>/`, from a machine that reaches the hub (a login
node), so the array's compute nodes run offline.

Takes the same `key=value` arguments as `jobs/submit.py` (grid, root, axes, config fields) and
stages what those cells would read: one stage per (model, data, seed, budget); resumable (run it
again after an interruption) and verified (sha256 of every file). `dry_run=true` prints what
would be staged and its size. `submit.py ... stage=true` stages first, then submits.
"""

from __future__ import annotations

from jobs import cli
from jobs.plan.make import make_plan
from jobs.plan.stages import run_stages


def main(*tokens: str) -> None:
    plan = make_plan([str(t) for t in tokens] + ["stage=true"])
    for s in plan.stages:
        print(s.describe())
    if not plan.opts.dry_run:
        run_stages(plan.stages)


if __name__ == "__main__":
    cli.run(main)
