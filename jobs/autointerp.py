"""`python jobs/autointerp.py root=<root> grid=<name> [field=value ...]`: the auto-interp step.

Runs after the analysis (its own SLURM job, `afterany` on the analysis; locally, after it),
whose feature-browser pass saved each dictionary's activation records
(`results/autointerp/records/<cell>.npz`). For each dictionary: `n_features` of its recorded
live features (seeded), each explained and scored (`e2e.autointerp.score`) through an
OpenAI-compatible endpoint, `concurrency` features at a time; its scores go to
`results/autointerp/<cell>.json`, then the collector runs again so that summary.csv,
results.h5, tables.md, the headline, `autointerp_fig9.png` and the feature browser show them.

Options: the grid's `autointerp.json` (written by submit.py from `autointerp.<field>=`), any
field overridden here. Every answer is cached under `<root>/_autointerp_cache/`: a killed job
resumes without asking again; a dictionary already scored with the same options and records is
skipped, so a rerun of a finished grid sends nothing and needs no endpoint. An endpoint that
does not answer is one line before any request, and the grid's other results stay as they are.
With `serve=<model>` the job starts `serve_command` itself, waits for it to answer, scores,
and stops it (`jobs.explain.serve`).
"""

from __future__ import annotations

import dataclasses
import typing

from e2e.typed import ConfigError, from_text
from jobs import cli
from jobs.explain.step import autointerp, options
from jobs.plan.autointerp import AutoInterp
from jobs.report.results import existing_grid_dir


@dataclasses.dataclass(frozen=True)
class Options:
    grid: str
    root: str = "runs"


def main(*tokens: str) -> None:
    """grid= and root=, then any AutoInterp field over the grid's autointerp.json."""
    pairs, _ = cli.split_tokens(tokens)
    own = [f"{k}={v}" for k, v in pairs if k in ("grid", "root")]
    o = cli.parse_options(own, Options)
    hints = typing.get_type_hints(AutoInterp)
    bad = [k for k, _ in pairs if k not in hints and k not in ("grid", "root")]
    if bad:
        raise ConfigError(f"unknown key {bad[0]!r}; valid keys: grid, root, "
                          f"{', '.join(sorted(hints))}")
    overrides = {k: from_text(hints[k], v, k) for k, v in pairs if k in hints}
    grid_dir = existing_grid_dir(o.root, o.grid)
    results = autointerp(o.root, o.grid, options(grid_dir, overrides))
    print((results / "headline.txt").read_text())


if __name__ == "__main__":
    cli.run(main)
