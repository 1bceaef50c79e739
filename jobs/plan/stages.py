"""The stages a plan involves (`jobs/stage.py`: model and token rows copied under
`<root>/_sources/` for offline compute nodes): which stage each cell reads, whether it is
complete, and staging them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from e2e.config import CellConfig, ConfigError
from e2e.data.stage import rows_needed, stage, stage_key, staged_config
from e2e.data.staged import StageError, verify


@dataclass
class Stage:
    dir: Path
    cfg: CellConfig  # one of the cells reading it, with the original sources
    n_train_rows: int
    n_eval_rows: int

    @property
    def status(self) -> str:
        if (self.dir / "DONE").exists():
            return "staged"
        return "partial (resumes)" if self.dir.exists() else "to stage"

    def describe(self) -> str:
        ctx = self.cfg.data.context_length
        rows = self.n_train_rows + self.n_eval_rows
        return (f"{self.dir}: {self.cfg.model.name_or_path} + {self.n_train_rows:,} train and "
                f"{self.n_eval_rows:,} eval rows of {ctx} tokens from {self.cfg.data.dataset} "
                f"(seed {self.cfg.seed}): {rows * ctx:,} tokens, "
                f"{rows * ctx * 4 / 1e9:.2f} GB + the model; {self.status}")


def stages_for(cfgs: list[CellConfig], root: Path) -> tuple[list[Stage], list[Stage]]:
    """The stage each cell reads (in order; one object per rows read), and the distinct ones."""
    by_key: dict[str, Stage] = {}
    per_cell = []
    for cfg in cfgs:
        n_train, n_eval = rows_needed(cfg)
        key = stage_key(cfg, n_train, n_eval)
        per_cell.append(by_key.setdefault(key, Stage(root / "_sources" / key, cfg, n_train,
                                                      n_eval)))
    return per_cell, list(by_key.values())


def apply_source(cfgs: list[CellConfig], root: Path, source: str, will_stage: bool,
                 notes: list[str]) -> tuple[list[CellConfig], list[Stage]]:
    """The cell configs reading the stage (or the original sources), and the stages involved.

    Raises ConfigError when `source=staged` and a stage is missing, partial or corrupt.
    """
    per_cell, unique = stages_for(cfgs, root)
    if source == "hub" and not will_stage:
        return cfgs, []
    complete = all(s.status == "staged" for s in unique)
    if not will_stage and not complete:
        if source == "staged":
            missing = "; ".join(s.describe() for s in unique if s.status != "staged")
            raise ConfigError(f"source=staged but not staged: {missing}. Stage from a machine "
                              "with internet: python jobs/stage.py <the same arguments>")
        notes.append("sources not staged: every compute node reads the hub (offline nodes: "
                     "python jobs/stage.py <the same arguments> first, or stage=true)")
        return cfgs, unique
    if complete and not will_stage:
        for s in unique:
            try:
                verify(s.dir)
            except StageError as e:
                raise ConfigError(str(e)) from None
    return [staged_config(c, s.dir) for c, s in zip(cfgs, per_cell, strict=True)], unique


def run_stages(stages: list[Stage]) -> None:
    for s in stages:
        print(f"staging {s.describe()}", flush=True)
        stage(s.cfg, s.n_train_rows, s.n_eval_rows, s.dir)
        verify(s.dir)
        print(f"staged: {s.dir}", flush=True)
