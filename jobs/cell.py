"""`python -m jobs.cell <cell_dir> [<cell_dir> ...]`: one pack trained or resumed by hand, as a
job would (`jobs.run.cell.CellJob`); slurm/array.sbatch runs each task's pack with it."""

from __future__ import annotations

from dataclasses import dataclass

from e2e.io import cell_paths, read_cell_config
from jobs import cli
from jobs.run.cell import CellJob


@dataclass(frozen=True)
class Options:
    cells: tuple[str, ...]  # the pack's cell folders (given as bare arguments)


def main(*tokens: str) -> None:
    cells = cli.parse_options(tokens, Options, positional="cells").cells
    for d in cells:
        try:
            read_cell_config(d)
        except FileNotFoundError:
            raise cli.ConfigError(f"{d} is not a cell folder: it has no config.json") from None
        except cli.ConfigError as e:
            raise cli.ConfigError(f"{cell_paths(d).config}: {e}") from None
    print(CellJob(list(cells))())


if __name__ == "__main__":
    cli.run(main)
