"""A grid's plan: its cells (with their status on the shared root), packs and stages, and
where and how they run. Everything is checked here before anything is written or submitted;
`submit.py` and `stage.py` are thin command lines over `make_plan`.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from e2e.config import (
    CellConfig,
    ConfigError,
    check_context,
    check_layer,
    check_sizes,
    n_dict_for,
    normalized,
)
from e2e.io import cell_paths, check_folder_config, stored_config
from e2e.kernels.chip import EMULATED_BF16, native_bf16
from e2e.train.warm import parent_dir, parent_mismatch, parent_notes, weights_sha256
from e2e.typed import with_overrides
from jobs.plan import containers, sources
from jobs.plan.analysis_cost import analysis_mem_gb, analysis_seconds, browser_estimate
from jobs.plan.autointerp import AutoInterp, n_dictionaries
from jobs.plan.evals import Evals, check_evals
from jobs.plan.finetune import Finetune, aligned_packs, children
from jobs.plan.folders import folder_id, legacy_folder
from jobs.plan.grid import Grid, expand, grid_pretrain_dir, k_axis, make_packs
from jobs.plan.grids import grid_named
from jobs.plan.options import Axes, RunOptions, absolute, parse_overrides
from jobs.plan.sources import check_own_lm, check_sources, check_tokenizers, known_shape
from jobs.plan.stages import Stage, apply_source

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Cell:
    id: str
    cfg: CellConfig
    dir: Path
    status: str  # "done", "resume" (a checkpoint exists) or "new"
    rewrite: bool = False  # a folder of before 2026-12-07 whose config.json names the root


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
    stages: list[Stage] = field(default_factory=list)  # staged sources involved
    notes: list[str] = field(default_factory=list)
    # The fine-tune stage (`jobs.plan.finetune`): children of the local cells, trained after them.
    finetune: Finetune | None = None
    children: list[Cell] = field(default_factory=list)
    child_of: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> parent, fraction
    # The model's (blocks, width) where known offline, else None (`_check_shapes`).
    model_shape: tuple[int, int] | None = None
    autointerp: AutoInterp | None = None  # the auto-interp step after the analysis, if any
    evals: Evals | None = None  # the evaluation step after the analysis, if any

    def child_tasks(self, parent_packs: list[list[Cell]]) -> list[tuple[float, list[list[Cell]]]]:
        """Per fraction, the children still to train of the parents in each of `parent_packs`
        (task i waits for parent task i; a task may be empty)."""
        if not self.children:
            return []
        todo = [(*self.child_of[c.id], c.id) for c in self.children if c.status != "done"]
        by_id = {c.id: c for c in self.children}
        ids = [[c.id for c in p] for p in parent_packs]
        return [(f, [[by_id[i] for i in pack] for pack in aligned_packs(ids, todo, f)])
                for f in self.finetune.fractions]

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
    def analysis_s(self) -> float:
        """The analysis step's modelled seconds, `jobs.plan.analysis_cost` (a model of unknown
        shape is taken as GPT-2 small's: 12 blocks, width 768)."""
        dicts, width, depth = self._dicts
        sizes = [n for _, n, _ in dicts]
        layers = len({layer for layer, _, _ in dicts})
        return analysis_seconds(sizes, width, depth, layers, self.cpus,
                                self.browser_estimate[2])

    @property
    def analysis_time_min(self) -> int:
        """The analysis job's limit: twice the model plus 10 minutes, at most a day."""
        return min(24 * 60, 10 + math.ceil(2 * self.analysis_s / 60))

    @property
    def autointerp_minutes(self) -> int:
        """The auto-interp job's limit (`AutoInterp.minutes`) for the plan's dictionaries."""
        return self.autointerp.minutes(n_dictionaries(self))

    @property
    def analysis_gpus(self) -> int:
        """One GPU for the analysis job's encodings when cells have one (DB-KSVD's pursuit at
        46,080 atoms takes hours per pass on CPUs); none locally (this machine's CPUs)."""
        return 1 if self.opts.gpus_per_cell > 0 and self.executor == "slurm" else 0

    @property
    def browser_estimate(self) -> tuple[int, float, float]:
        """(feature pages at most, bytes, seconds): `jobs.plan.analysis_cost.browser_estimate`."""
        return browser_estimate(*self._dicts, self.analysis_gpus > 0)

    @property
    def analysis_mem_gb(self) -> int:
        return self.opts.mem_gb or analysis_mem_gb(*self._dicts)

    @property
    def _dicts(self) -> tuple[list[tuple[int, int, int]], int, int]:
        """(layer, n_dict, ksvd budget or 0) of every dictionary on a model that the analysis
        reads (the fine-tune stage's children too), width, depth."""
        depth, width = self.model_shape or (12, 768)
        return [(c.cfg.layer, n_dict_for(width, c.cfg.sae.dict_size_to_input_ratio),
                 int(c.cfg.lam) if c.cfg.loss.setting == "ksvd" else 0)
                for c in self.cells + self.children if c.cfg.source == "model"], width, depth

    @property
    def needs_pretrain(self) -> bool:
        """The grid's own LM is not built yet and some cell reads it (its model or rows)."""
        if self.grid.pretrain is None:
            return False
        own = grid_pretrain_dir(Path(self.opts.root).resolve(), self.grid)
        reads = any(Path(p).is_relative_to(own) for c in self.cells + self.children
                    for p in (c.cfg.model.name_or_path, c.cfg.data.dataset))
        return reads and not (own / "DONE").exists()


def make_plan(tokens: list[str]) -> Plan:
    """Parses and validates everything; reads the output root but writes nothing."""
    opts, axes, cfg_overrides = parse_overrides(tokens)
    grid = grid_named(opts.grid)
    notes: list[str] = []
    if grid.without_bf16 and not native_bf16(torch.device("cpu")):
        notes.append(f"grid={grid.name} on a CPU without native bf16 (it dispatches "
                     f"{torch.backends.cpu.get_cpu_capability()} kernels): grid="
                     f"{grid.without_bf16} instead, the same comparison sized for float32 "
                     "(docs/demo.md)")
        grid = grid_named(grid.without_bf16)
        opts = replace(opts, grid=grid.name)
    root = Path(opts.root).resolve()
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"root={opts.root} is invalid: {existing} is a file, not a folder")
    # Normalising may make cells equal (e.g. a ksvd-only sweep axis on an SAE cell): once each.
    k_grid, axes, cfg_overrides = k_axis(grid, axes, cfg_overrides)
    cfg_overrides = absolute(cfg_overrides)
    cfgs = list(dict.fromkeys(normalized(with_overrides(c, cfg_overrides))
                              for c in _expand(k_grid, axes, root)))
    if not cfgs:
        raise ConfigError("the grid with these overrides has no cells")
    source_cfgs, stages = cfgs, []
    # Generated activations (source=synthetic) need no model, data, stage or layer check.
    needs_model = any(c.source == "model" for c in cfgs)
    if not needs_model and (opts.stage or opts.source == "staged"):
        raise ConfigError("source=synthetic cells read no model or data: there is nothing "
                          "to stage")
    if grid.pretrain is not None and (opts.stage or opts.source == "staged"):
        raise ConfigError(f"grid={grid.name} builds its own model and data (pre-training) on "
                          "the shared root: there is nothing to stage")
    if grid.pretrain is None and needs_model:
        cfgs, stages = apply_source(cfgs, root, opts.source, opts.stage, notes)
    shape = _check_shapes(grid, cfgs, source_cfgs, needs_model, root)
    notes += check_tokenizers(source_cfgs, grid_pretrain_dir(root, grid) if grid.pretrain else None)
    depth = shape[0] if shape else None
    shas: dict[tuple[str, str], str] = {}  # one hash per parent (a paper SAE's: 280 MB)
    cfgs = [_with_parent(c, root / grid.name, shape[1] if shape else None, shas) for c in cfgs]
    notes += sorted({n for c in cfgs for n in parent_notes(c)})
    cells = _cells(cfgs, root / grid.name)
    plan = _place(opts, grid, cells, cfgs, stages, notes, root)
    plan.model_shape = shape[:2] if shape else None
    ft = axes.finetune or grid.finetune  # the command line's, else the grid's own stage
    kids = children([(c.id, c.cfg) for c in cells], ft) if ft else []
    if axes.finetune and not kids:
        raise ConfigError("finetune.settings= is given but the grid has no local cells to "
                          "fine-tune (local SAEs on a model, without MFR; settings= "
                          "must include local)")
    if kids:
        plan.finetune, plan.children = ft, _cells([k[2] for k in kids], root / grid.name)
        plan.child_of = {c.id: (pid, f) for c, (pid, f, _) in zip(plan.children, kids,
                                                                  strict=True)}
        # cell tasks with a parent first: fine-tune task i waits for cell task i, so the
        # fine-tune arrays then have no empty tasks in front
        parents = {pid for pid, _ in plan.child_of.values()}
        plan.packs.sort(key=lambda p: not any(c.id in parents for c in p))
    legacy = sum(c.rewrite for c in plan.cells + plan.children)
    if legacy:
        plan.notes.append(f"{legacy} cell folder(s) written before 2026-12-07 found by their "
                          "config (their ids hashed the root's absolute path): they keep their "
                          "names, and writing the plan stores their paths relative to the root")
    if depth is None and needs_model:
        plan.notes.append(f"the depth of {cfgs[0].model.name_or_path} is not known here (not "
                          "in the HF cache): layers are checked when each cell starts")
    plan.notes += emulated_bf16(cfgs, plan.executor)
    plan.autointerp = axes.autointerp
    plan.evals = check_evals(axes.evals and axes.evals.on(plan.analysis_gpus > 0), cells,
                             shape[2] if shape else None)
    own = grid_pretrain_dir(root, grid) if grid.pretrain else None
    if own is not None:  # the dry run too: nothing to read
        check_own_lm(cells[0].cfg, own, grid.pretrain.tokens())
    if needs_model and not opts.dry_run:
        # fails with a clear message before anything is submitted (staging reads the originals;
        # a grid's own LM, built by its pretrain job, is checked once it is there)
        check_sources(source_cfgs[0] if opts.stage else cells[0].cfg, own)
    elif needs_model:  # the dry run: what needs no network
        plan.notes += sources.dry_run_checks(cells[0].cfg, grid.pretrain is None, grid)
    return plan


def emulated_bf16(cfgs: list[CellConfig], executor: str) -> list[str]:
    """One line where cells ask for bf16 on a CPU that would emulate it: each step several
    times slower than float32 (warned, not refused: a user may want the same dtype on every
    machine). Cells that run here (local) or name `device=cpu` are the ones that count."""
    here = [c for c in cfgs if c.dtype == "bfloat16" and (
        c.device == "cpu" or (executor == "local" and c.device == "auto"
                              and not torch.cuda.is_available()))]
    if not here or native_bf16(torch.device("cpu")):
        return []
    return [f"dtype=bfloat16 on a CPU without native bf16 (this one dispatches "
            f"{torch.backends.cpu.get_cpu_capability()} kernels): {EMULATED_BF16}; "
            "dtype=auto trains in float32 here"]


def _cells(cfgs: list[CellConfig], grid_dir: Path) -> list[Cell]:
    """Each cell with its status (a folder of before 2026-12-07 found by its config:
    `jobs.plan.folders`); a folder holding a different config is refused."""
    names = set(os.listdir(grid_dir)) if grid_dir.is_dir() else set()
    cells = []
    for cfg in cfgs:
        cid = folder_id(cfg, grid_dir)
        legacy = cid not in names and legacy_folder(cfg, cid, grid_dir, names)
        paths = cell_paths(grid_dir / (legacy or cid))
        status = "new"
        if paths.config.exists():
            if not legacy:  # unused sections compare at today's defaults (an SAE's `ksvd`)
                check_folder_config(paths.config, cfg)
            status = "done" if paths.done.exists() else (
                "resume" if paths.checkpoint.exists() else "new")
        rewrite = bool(legacy) and paths.config.read_text() != stored_config(
            cfg, paths.root, grid_dir.parent).to_json()  # not yet in today's form
        cells.append(Cell(legacy or cid, cfg, paths.root, status, rewrite=rewrite))
    if len({c.id for c in cells}) != len(cells):
        raise ConfigError("two cells of the grid have the same config")
    return cells


def _with_parent(cfg: CellConfig, grid_dir: Path, d_in: int | None,
                 shas: dict[tuple[str, str], str]) -> CellConfig:
    """A cell given `init.from_cell` or `init.from_path`: its parent checked (finished, same
    hook and shape) and its weights' sha256 in the config, so a changed parent is a new cell."""
    if not cfg.init.warm:
        return cfg
    parent = parent_dir(cfg, grid_dir)
    why = parent_mismatch(cfg, parent, d_in)
    if why:
        raise ConfigError(why)
    key = (cfg.init.from_cell, cfg.init.from_path)
    if key not in shas:
        shas[key] = weights_sha256(cfg, parent)
    return replace(cfg, init=replace(cfg.init, sha256=shas[key]))


def _check_shapes(grid: Grid, cfgs: list[CellConfig], source_cfgs: list[CellConfig],
                  needs_model: bool, root: Path) -> tuple[int, int, int | None] | None:
    """Layers, context and sizes against the model's (blocks, width, positions) where they are
    known offline (a pre-trained grid, a stage, the HF cache); returns that shape, or None."""
    own = str(grid_pretrain_dir(root, grid) / "model") if grid.pretrain else None
    shape = (known_shape(grid, cfgs[0], source_cfgs[0], own)
             if needs_model or grid.pretrain is not None else None)
    model_cfgs = [c for c in cfgs if c.source == "model"] if shape is not None else []
    for cfg in model_cfgs:  # every layer first: the message names what the grid gets wrong
        check_layer(cfg, shape[0])
    for cfg in model_cfgs:
        check_context(cfg, shape[2])
        check_sizes(cfg, shape[1])
    return shape


def _place(opts: RunOptions, grid: Grid, cells: list[Cell], cfgs: list[CellConfig], stages,
           notes: list[str], root: Path) -> Plan:
    if opts.gpus_per_cell is None:  # no GPU asked for cells that run on CPU (grid=smollm2)
        opts = replace(opts, gpus_per_cell=0 if all(c.device == "cpu" for c in cfgs) else 1)
    pack_size = opts.pack or grid.pack
    executor = opts.executor
    if executor == "auto":
        executor = "slurm" if _slurm_reachable() else "local"
    container = opts.container or grid.container
    image = opts.image if opts.image is not None else grid.image
    if container == "apptainer" and image and not Path(image).is_absolute():
        image = str(REPO / image)
    python = containers.python_command(container, image, root, gpus=opts.gpus_per_cell > 0)
    packs = [[cells[i] for i in p] for p in make_packs(cfgs, pack_size)]
    largest = max(len(p) for p in packs)
    # A member of a pack costs less than a cell alone (the clean pass is shared): the grid's
    # time per cell times the pack size bounds a task. Capped at a day (common partition
    # limits): a task that reaches its limit checkpoints on USR2, requeues and resumes.
    time_min = opts.time or min(grid.time_min * largest, max(grid.time_min, 24 * 60))
    return Plan(opts, grid, executor, container, cells, image, python, time_min,
                opts.cpus_per_cell or grid.cpus_per_cell, pack_size, packs, stages, notes)


def _slurm_reachable() -> bool:
    """sbatch on PATH and a controller that answers (not just an unconfigured client)."""
    if not shutil.which("sbatch"):
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=30)
    return r.returncode == 0


def _expand(grid: Grid, axes: Axes, root: Path) -> list[CellConfig]:
    settings = axes.settings or grid.settings
    unused = sorted(set(axes.lambdas or {}) - set(settings))
    if unused:
        raise ConfigError(f"lambdas.{unused[0]}= is given but {unused[0]} is not among the "
                          f"settings this run trains ({', '.join(settings)})")
    sweep = {**(axes.sweep or {}), **({"seed": axes.seeds} if axes.seeds else {})}
    return expand(grid, root, axes.layers, axes.settings, axes.sparsity_coeffs, axes.lambdas,
                  sweep, axes.variants)
