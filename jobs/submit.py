"""`python jobs/submit.py grid=<name> [key=value ...]`: a grid becomes one array of cell jobs.

Everything is checked before anything is written or submitted: keys, values, grid name, every
cell's config, and existing cell folders whose config differs. Then, through submitit, the same
jobs run on SLURM (one array, after the pre-training job if the grid has one, followed by the
collector with `afterany`) or as local processes (in waves of `array_parallelism`).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/submit.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e.config import (  # noqa: E402
    CellConfig,
    ConfigError,
    check_layer,
    check_n_dict,
    normalized,
    with_overrides,
)
from e2e.io import atomic_write_text, cell_paths  # noqa: E402
from jobs import containers  # noqa: E402
from jobs.grids import GRIDS, Grid, cell_id, expand, make_packs, pretrain_dir  # noqa: E402
from jobs.overrides import Axes, RunOptions, parse_overrides  # noqa: E402
from jobs.sources import check_sources, model_shape  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Cell:
    id: str
    cfg: CellConfig
    dir: Path
    status: str  # "done", "resume" (a checkpoint exists) or "new"


@dataclass
class Plan:
    opts: RunOptions
    grid: Grid
    executor: str
    container: str
    cells: list[Cell]
    image: str
    python: str  # the command that runs `python` for a job (container wrapper included)
    time_min: int  # per array task (a pack)
    cpus: int
    pack_size: int
    packs: list[list[Cell]] = field(default_factory=list)  # one array task each
    stages: list = field(default_factory=list)  # jobs.stage.Stage: staged sources involved
    notes: list[str] = field(default_factory=list)

    @property
    def grid_dir(self) -> Path:
        return Path(self.opts.root).resolve() / self.grid.name

    @property
    def todo(self) -> list[Cell]:
        return [c for c in self.cells if c.status != "done"]

    @property
    def todo_packs(self) -> list[list[Cell]]:
        """Packs with a cell left to train; a pack's finished members are skipped by the job."""
        return [p for p in self.packs if any(c.status != "done" for c in p)]

    @property
    def analysis_time_min(self) -> int:
        """The analysis job's limit: geometry of every cell (a 46,080² cosine pass is ≈1.6
        TFLOP, under a minute on a few cores) plus multi-dimensional features of the trios."""
        return min(24 * 60, 30 + 2 * len(self.cells))

    @property
    def needs_pretrain(self) -> bool:
        if self.grid.pretrain is None:
            return False
        return not (pretrain_dir(Path(self.opts.root).resolve(), self.grid.name) / "DONE").exists()


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def make_plan(tokens: list[str]) -> Plan:
    """Parses and validates everything; reads the output root but writes nothing."""
    opts, axes, cfg_overrides = parse_overrides(tokens)
    if opts.grid not in GRIDS:
        raise ConfigError(f"grid={opts.grid!r} is invalid: must be one of {sorted(GRIDS)}")
    grid = GRIDS[opts.grid]
    root = Path(opts.root).resolve()
    # Normalising may make cells equal (e.g. a ksvd-only sweep axis on an SAE cell): once each.
    cfgs = list(dict.fromkeys(normalized(with_overrides(c, cfg_overrides))
                              for c in _expand(grid, root, axes)))
    if not cfgs:
        raise ConfigError("the grid with these overrides has no cells")
    notes: list[str] = []
    stages = []
    source_cfgs = cfgs
    # Generated activations (source=synthetic) need no model, data, stage or layer check.
    needs_model = any(c.source == "model" for c in cfgs)
    if not needs_model and (opts.stage or opts.source == "staged"):
        raise ConfigError("source=synthetic cells read no model or data: there is nothing "
                          "to stage")
    if grid.pretrain is not None and (opts.stage or opts.source == "staged"):
        raise ConfigError(f"grid={grid.name} builds its own model and data (pre-training) on "
                          "the shared root: there is nothing to stage")
    if grid.pretrain is None and needs_model:
        from jobs.stage import apply_source

        cfgs, stages = apply_source(cfgs, root, opts.source, opts.stage, notes)
    cells = []
    for cfg in cfgs:
        cid = cell_id(cfg)
        paths = cell_paths(root / grid.name / cid)
        status = "new"
        if paths.config.exists():
            # unused sections compare at today's defaults (an SAE cell's `ksvd`)
            old = normalized(CellConfig.from_json(paths.config.read_text()))
            if old != cfg:
                diff = "; ".join(_diff(old.to_dict(), cfg.to_dict()))
                raise ConfigError(f"{paths.root} holds a different config: {diff}")
            status = "done" if paths.done.exists() else (
                "resume" if paths.checkpoint.exists() else "new")
        cells.append(Cell(cid, cfg, paths.root, status))
    if len({c.id for c in cells}) != len(cells):
        raise ConfigError("two cells of the grid have the same config")
    # (blocks, width) of the model: known offline for a pre-trained grid or a stage
    shape = ((grid.pretrain.n_layers, grid.pretrain.d_model) if grid.pretrain is not None
             else None if not needs_model
             else model_shape(cfgs[0].model.name_or_path)
             or model_shape(source_cfgs[0].model.name_or_path))
    depth = shape[0] if shape else None
    for cfg in cfgs if shape is not None else ():
        if cfg.source == "model":
            check_layer(cfg, depth)
            check_n_dict(cfg, shape[1])
    pack_size = opts.pack or grid.pack
    executor = opts.executor
    if executor == "auto":
        executor = "slurm" if _slurm_reachable() else "local"
    container = opts.container or grid.container
    image = opts.image if opts.image is not None else grid.image
    if container != "none" and not image:
        raise ConfigError(f"container={container} needs image=<path or name>")
    if container == "apptainer" and not Path(image).is_absolute():
        image = str(REPO / image)
    python = containers.python_command(container, image, root, gpus=opts.gpus_per_cell > 0)
    packs = [[cells[i] for i in p] for p in make_packs(cfgs, pack_size)]
    largest = max(len(p) for p in packs)
    # A member of a pack costs less than a cell alone (the clean pass is shared): the grid's
    # time per cell times the pack size bounds a task. Capped at a day (common partition
    # limits): a task that reaches its limit checkpoints on USR2, requeues and resumes.
    time_min = opts.time or min(grid.time_min * largest, max(grid.time_min, 24 * 60))
    plan = Plan(opts, grid, executor, container, cells, image, python, time_min,
                opts.cpus_per_cell or grid.cpus_per_cell, pack_size, packs, stages, notes)
    if depth is None and needs_model:
        plan.notes.append(f"the depth of {cfgs[0].model.name_or_path} is not known here (not "
                          "in the HF cache): layers are checked when each cell starts")
    if not needs_model:
        pass
    elif not opts.dry_run and grid.pretrain is None:
        # fails with a clear message before anything is submitted (staging reads the originals)
        check_sources(source_cfgs[0] if opts.stage else cells[0].cfg)
    elif grid.pretrain is None:
        plan.notes.append("model and dataset reachability is checked at submission, not in "
                          "a dry run")
    return plan


def _slurm_reachable() -> bool:
    """sbatch on PATH and a controller that answers (an installed but unconfigured client
    would otherwise fail only at submission)."""
    if not shutil.which("sbatch"):
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=30)
    return r.returncode == 0


def _expand(grid: Grid, root: Path, axes: Axes) -> list[CellConfig]:
    sweep = {**(axes.sweep or {}), **({"seed": axes.seeds} if axes.seeds else {})}
    return expand(grid, root, axes.layers, axes.settings, axes.sparsity_coeffs, axes.lambdas,
                  sweep)


def format_plan(plan: Plan) -> str:
    o = plan.opts
    lines = [f"grid {plan.grid.name}: {len(plan.cells)} cells, {len(plan.todo)} to run "
             f"({sum(c.status == 'done' for c in plan.cells)} done) under {plan.grid_dir}",
             f"packs: up to {plan.pack_size} cells per task sharing one pass of the frozen "
             f"model (pack=; grid default {plan.grid.pack}): {len(plan.packs)} tasks, "
             f"{len(plan.todo_packs)} to run",
             f"executor: {plan.executor}; container: {plan.container}"]
    if plan.executor == "slurm":
        lines.append(f"SLURM, per task: --gres=gpu:{o.gpus_per_cell} --cpus-per-task="
                     f"{plan.cpus} --time={plan.time_min} (minutes) "
                     f"--partition={o.partition or '(default)'} "
                     f"--mem={f'{o.mem_gb}G' if o.mem_gb else '(default)'}, one array "
                     f"(parallelism {o.array_parallelism or 'unlimited'}), --signal=USR2@120, "
                     "--requeue")
    else:
        lines.append(f"local processes, {o.array_parallelism or 1} at a time (on SLURM each "
                     f"task would ask for {o.gpus_per_cell} GPU and {plan.time_min} min)")
    if plan.grid.gpu_hours:
        known = [plan.grid.gpu_hours.get((c.cfg.layer, c.cfg.loss.setting)) for c in plan.todo]
        hours = sum(h for h in known if h is not None)
        lines.append(f"estimated {hours:,.0f} GPU-hours for the {len(plan.todo)} cells to run "
                     "(the paper's Table 6 per cell on one A100; packs share the clean pass)")
    if plan.needs_pretrain:
        lines.append(f"pre-training job first -> {pretrain_dir(Path(o.root), plan.grid.name)}")
    for s in plan.stages:
        lines.append(f"{'staging here first' if o.stage else 'stage'}: {s.describe()}")
    lines.append(f"job command: {plan.python} -u -m submitit.core._submit <job folder>")
    lines.append(f"{'task':>4} {'cell':34} {'layer':>5} {'setting':8} {'λ':>8}  status"
                 + ("  (ksvd: λ is max_nnz)" if any(c.cfg.loss.setting == "ksvd"
                                                    for c in plan.cells) else ""))
    for t, pack in enumerate(plan.packs):
        for c in pack:
            lines.append(f"{t:>4} {c.id:34} {c.cfg.layer:>5} {c.cfg.loss.setting:8} "
                         f"{c.cfg.lam:>8g}  {c.status}")
    lines.append("then: collector job (after the array, whatever its outcome), then the "
                 f"analysis job (after the collector; CPU only, {plan.cpus} CPUs, "
                 f"--time={plan.analysis_time_min}: geometry, downstream reconstruction, "
                 "multi-dimensional features)")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def write_configs(plan: Plan) -> None:
    """Each cell's config.json, and `manifest.txt` (one pack per line: its cell folders,
    space-separated) for the plain `sbatch slurm/array.sbatch` path."""
    for c in plan.todo:
        paths = cell_paths(c.dir)
        if not paths.config.exists():
            atomic_write_text(paths.config, c.cfg.to_json())
    manifest = plan.grid_dir / "manifest.txt"
    text = "".join(" ".join(str(c.dir) for c in p) + "\n" for p in plan.packs)
    if not manifest.exists() or manifest.read_text() != text:  # a rerun writes nothing
        atomic_write_text(manifest, text)


def plain_sbatch_commands(plan: Plan) -> str:
    """The plain-sbatch recipe for a written plan: pre-training if needed, the array over
    manifest.txt (one task per pack), the collector after it, then the analysis step."""
    root, grid = Path(plan.opts.root).resolve(), plan.grid.name
    n = len(plan.packs)
    env = f"E2E_CONTAINER={plan.container}" + (
        f" E2E_IMAGE={shlex.quote(plan.image)}" if plan.container != "none" else
        f" E2E_PYTHON={shlex.quote(sys.executable)}")

    def wrap(step: str) -> str:  # pre-training and collector run in the cells' container too
        return shlex.quote(f"{plan.python} -m jobs.launch {step} {grid} {root}")

    lines = ["written: cell configs and " + str(plan.grid_dir / "manifest.txt") +
             "; submit from the repository root with:"]
    dep = ""
    if plan.needs_pretrain:
        lines.append(f"pre=$(sbatch --parsable --job-name={grid}-pretrain --wrap "
                     f"{wrap('pretrain')})")
        dep = " --dependency=afterok:$pre"
    lines.append(f"arr=$({env} sbatch --parsable --array=0-{n - 1}{dep} "
                 f"--time={plan.time_min} --cpus-per-task={plan.cpus} slurm/array.sbatch "
                 f"{plan.grid_dir / 'manifest.txt'})")
    lines.append(f"col=$(sbatch --parsable --dependency=afterany:$arr --job-name={grid}-collect "
                 f"--wrap {wrap('collect')})")
    lines.append(f"sbatch --dependency=afterany:$col --job-name={grid}-analyze "
                 f"--time={plan.analysis_time_min} --wrap {wrap('analyze')}")
    return "\n".join(lines)


def main(*tokens: str) -> None:
    try:
        plan = make_plan([str(t) for t in tokens])
    except ConfigError as e:
        sys.exit(f"error: {e}")
    print(format_plan(plan), flush=True)
    if plan.opts.dry_run:
        return
    if plan.opts.stage:
        from jobs.stage import run_stages

        run_stages(plan.stages)
    write_configs(plan)
    if not plan.opts.submit:
        print(plain_sbatch_commands(plan))
        return
    from jobs.launch import launch

    launch(plan)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
