"""`python jobs/analyze.py root=<root> grid=<name>`: the paper's analyses of the saved
dictionaries, run after the collector (its own SLURM job, `afterany` on the collector); the
collector runs again after it, so tables.md and summary.csv include its sections.

Reads what finished cells saved (sae/ weights, metrics.h5 with `alive_mask` and the eval
scalars); the multi-dimensional step also runs the frozen model over eval tokens for the codes
of the Table 2 trio (cells save no codes). Writes beside the tables in `<root>/<grid>/results/`:
- geometry (Braun et al. 2024, Sec. 3.3, Figs. 3, 7, 8) on the unit-norm directions of alive
  elements: within-SAE max cosine per cell (mean and a 50-bin histogram), cross-seed (cells
  that differ only in seed) and cross-type (e2e -> local, e2e_ds -> local for the Table 2
  trio) max cosines, and the differences local - e2e_ds, local - e2e of within-SAE means with
  95% bootstrap CIs; `geometry_within.png` (Fig. 7), `geometry_hist.png` (Fig. 3);
- downstream reconstruction (Figs. 2, 6): MSE and explained variance at the SAE's layer and at
  every later resid_pre for the Table 2 trio of each layer, `downstream.png`;
- multi-dimensional features (Engels et al. 2024) of the Table 2 trio of each layer: clusters
  of alive directions, their points on eval tokens, PCA, mixture and separability indices,
  `multidim_scatter.png` and `multidim_top.png` (`e2e.analysis.multidim`; options: `Options`);
- the feature browser, `browser/index.html` (`jobs.analysis.browser`), after the collector's
  last run;
- `analysis.md` / `analysis.tex` (appended to tables.md/.tex by the collector), `analysis.h5`,
  and a `within_max_cos_mean` column in summary.csv.
A half-finished grid gets what its finished cells allow; cells without an alive mask (trained
before it was saved) use every element, and the table says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from e2e.typed import ConfigError
from jobs import cli
from jobs.analysis.step import Options, analyze
from jobs.report.results import (
    ANALYSIS_MD,
)


@dataclass(frozen=True)
class CliOptions(Options):
    grid: str = ""
    root: str = "runs"


def main(*tokens: str) -> None:
    o = cli.parse_options(tokens, CliOptions)
    if not o.grid:
        raise ConfigError("missing grid=")
    opts = Options(**{f: getattr(o, f) for f in Options.__dataclass_fields__})
    out = analyze(Path(o.root), o.grid, opts)
    print(f"analysis: {out / ANALYSIS_MD} (tables.md includes it), {out}/*.png")


if __name__ == "__main__":
    cli.run(main)
