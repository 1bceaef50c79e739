"""`python jobs/collect.py root=<root> grid=<name>`: the paper's tables and plots from the cells.

Reads what every cell saved (`jobs.report.results`) and writes `<root>/<grid>/results/`:
summary.csv, tables.md, tables.tex, headline.txt, pareto_l0.png, pareto_alive.png (and
pareto_l0_<arch>.png, pareto_alive_<arch>.png per SAE architecture other than ReLU),
ce_vs_compute.png (with a fine-tune stage) and results.h5 (with the analysis step's sections
once it has run), and the auto-interp step's scores once it has run (`jobs.report.autointerp`:
columns, a section, a headline line, autointerp_fig9.png). Cells that are running, failed,
missing or corrupt are listed with their status and left out of the tables, never dropped
silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs import cli
from jobs.report.collect import collect


@dataclass(frozen=True)
class Options:
    grid: str
    root: str = "runs"


def main(*tokens: str) -> None:
    o = cli.parse_options(tokens, Options)
    out = collect(Path(o.root), o.grid)
    print((out / "headline.txt").read_text())
    print(f"tables and plots: {out}")


if __name__ == "__main__":
    cli.run(main)
