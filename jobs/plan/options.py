"""The options of `submit.py` and `stage.py` (`parse_overrides`): run options (`RunOptions`),
grid axes (`layers`, `settings`, `sparsity_coeffs` for every setting, `lambdas.<setting>` for
one, `sweep.<field>`, `variants` of a grid that has them, the fine-tune stage's and the
auto-interp step's sections) and any CellConfig field by dotted name (`optim.lr=1e-3`)."""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from e2e.config import SETTINGS, CellConfig
from e2e.io import PATH_FIELDS
from e2e.typed import ConfigError, field_types, from_text
from jobs.cli import split_tokens
from jobs.plan.autointerp import AutoInterp
from jobs.plan.evals import EVALS, Evals
from jobs.plan.finetune import Finetune


@dataclass(frozen=True)
class RunOptions:
    grid: str = ""
    root: str = "runs"
    executor: Literal["auto", "slurm", "local"] = "auto"
    # Unset: the grid's own choice (Apptainer for `paper`, none for the small grids).
    container: Literal["none", "apptainer", "podman"] | None = None
    image: str | None = None
    partition: str = ""
    time: int = 0  # minutes per cell; 0 takes the grid's own estimate
    gpus_per_cell: int | None = None  # None: 1, or 0 where every cell pins device=cpu
    cpus_per_cell: int = 0  # 0: the grid's own (4 for paper, 1 for the small grids)
    mem_gb: int = 0  # 0: the partition's default
    array_parallelism: int = 0  # 0: unlimited on SLURM, 1 task at a time locally
    # Cells per array task that differ only in loss and share one pass of the frozen model;
    # 0 takes the grid's own choice, 1 runs every cell alone.
    pack: int = 0
    dry_run: bool = False
    wait: bool = False
    # false: write the cell configs and manifest.txt and print the plain `sbatch
    # slurm/array.sbatch` commands instead of submitting through submitit.
    submit: bool = True
    # Where cells read the model and tokens: "staged" (the copy `jobs/stage.py` made under
    # <root>/_sources/, required), "hub" (the original ids; compute nodes need internet), or
    # "auto" (the stage when a complete one exists, else the original).
    source: Literal["auto", "staged", "hub"] = "auto"
    # true: stage here first (on a machine with internet), then submit reading the stage.
    stage: bool = False


@dataclass(frozen=True)
class Axes:
    layers: tuple[int, ...] | None = None
    settings: tuple[str, ...] | None = None
    sparsity_coeffs: tuple[float, ...] | None = None
    # setting -> λ values (`lambdas.e2e=[0.1,0.3]`): that setting's sweep at every layer,
    # taking precedence over `sparsity_coeffs` and the grid's own values.
    lambdas: dict[str, tuple[float, ...]] | None = None
    # dotted config field -> values (`sweep.seed=[0,1,2]`), crossed with every cell.
    sweep: dict[str, tuple] | None = None
    seeds: tuple[int, ...] | None = None  # `seeds=[0,1]`: sweep.seed
    # `variants=[batchtopk,jumprelu]`: only these parts of a grid with variants
    # (grid=architectures: its architectures)
    variants: tuple[str, ...] | None = None
    # `finetune.settings=[e2e,e2e_mse] finetune.fractions=[0.1]`: the fine-tune stage
    # (`jobs.plan.finetune`); None without `finetune.settings`.
    finetune: Finetune | None = None
    # `autointerp=true autointerp.base_url=... autointerp.model=...`: the auto-interp step
    # after the analysis (`jobs.plan.autointerp`); None without it.
    autointerp: AutoInterp | None = None
    # `evals=[core,probing] evals.max_rows=2000`: the evaluation step after the analysis
    # (`jobs.plan.evals`); None without it.
    evals: Evals | None = None


RUN_TYPES = typing.get_type_hints(RunOptions)


AXIS_TYPES = {"layers": tuple[int, ...], "settings": tuple[str, ...],
              "sparsity_coeffs": tuple[float, ...], "seeds": tuple[int, ...],
              "variants": tuple[str, ...],
              **{f"lambdas.{s}": tuple[float, ...] for s in SETTINGS},
              **{f"finetune.{k}": t for k, t in typing.get_type_hints(Finetune).items()},
              "autointerp": bool,
              **{f"autointerp.{k}": t for k, t in typing.get_type_hints(AutoInterp).items()},
              "evals": tuple[str, ...],
              **{f"evals.{k}": t for k, t in typing.get_type_hints(Evals).items()
                 if k != "names"}}


def valid_keys(near: str = "") -> str:
    """The keys submit.py takes, in short: the closest to `near` first, then the run options,
    the grid axes and the config sections (every field of each is a key)."""
    fields = sorted(field_types(CellConfig))
    close = difflib.get_close_matches(near, sorted(RUN_TYPES) + sorted(AXIS_TYPES) + fields,
                                      n=3, cutoff=0.6) if near else []
    close += [f for f in fields if f.endswith("." + near) and f not in close]
    sections = sorted({f.split(".")[0] for f in fields if "." in f})
    return ((f"closest: {', '.join(close)}; " if close else "")
            + f"run options: {', '.join(sorted(RUN_TYPES))}; grid axes: "
            f"{', '.join(sorted(AXIS_TYPES))}, sweep.<config field>; config fields by dotted "
            f"name in {', '.join(sections)} (e2e/config.py), or top-level: "
            f"{', '.join(f for f in fields if '.' not in f)}")


def parse_overrides(tokens: list[str]) -> tuple[RunOptions, Axes, dict[str, Any]]:
    """Splits `key=value` tokens into run options, grid axes and config-field overrides."""
    run: dict[str, Any] = {}
    axes: dict[str, Any] = {}
    cfg: dict[str, Any] = {}
    cfg_types = field_types(CellConfig)
    try:
        pairs, _ = split_tokens(tokens)
    except ConfigError as e:
        raise ConfigError(f"{e}; valid keys: {valid_keys()}") from None
    for key, text in pairs:
        if key in RUN_TYPES:
            run[key] = from_text(RUN_TYPES[key], text, key)
        elif key in AXIS_TYPES:
            axes[key] = from_text(AXIS_TYPES[key], text, key)
        elif key.startswith("sweep.") and key[6:] in cfg_types:
            field = key[6:]
            axes.setdefault("sweep", {})[field] = from_text(tuple[cfg_types[field], ...], text,
                                                            key)
        elif key in cfg_types:
            cfg[key] = from_text(cfg_types[key], text, key)
        else:
            raise ConfigError(f"unknown key {key!r}; valid keys: {valid_keys(key)}")
    for s in axes.get("settings", ()):
        if s not in SETTINGS:
            raise ConfigError(f"settings={s!r} is invalid: must be among {list(SETTINGS)}")
    lambdas = {k.split(".", 1)[1]: axes.pop(k) for k in list(axes) if k.startswith("lambdas.")}
    if lambdas:
        axes["lambdas"] = lambdas
    ft = {k.split(".", 1)[1]: axes.pop(k) for k in list(axes) if k.startswith("finetune.")}
    if ft and "settings" not in ft:
        raise ConfigError(f"finetune.{sorted(ft)[0]}= needs finetune.settings=[...] (the "
                          "recipes to train: e2e, e2e_mse, e2e_ds)")
    if ft:
        axes["finetune"] = Finetune(**ft)
    ai = {k.split(".", 1)[1]: axes.pop(k) for k in list(axes) if k.startswith("autointerp.")}
    on = axes.pop("autointerp", None)
    if ai and on is False:
        raise ConfigError("autointerp=false with autointerp.<field>= settings: drop one")
    if ai or on:
        axes["autointerp"] = AutoInterp(**ai)
    ev = {k.split(".", 1)[1]: axes.pop(k) for k in list(axes) if k.startswith("evals.")}
    names = axes.pop("evals", None)
    if ev and not names:
        raise ConfigError(f"evals.{sorted(ev)[0]}= needs evals=[...] (the evaluations to run: "
                          f"{', '.join(EVALS)})")
    if names:
        axes["evals"] = Evals(names=names, **ev)
    opts = RunOptions(**run)
    for name, low in (("pack", 0), ("gpus_per_cell", 0), ("cpus_per_cell", 0),
                      ("array_parallelism", 0), ("time", 0), ("mem_gb", 0)):
        if getattr(opts, name) is not None and getattr(opts, name) < low:
            raise ConfigError(f"{name}={getattr(opts, name)} is invalid: must be >= {low}")
    if not opts.root.strip():
        raise ConfigError("root= is empty: name the shared output folder (default runs)")
    _check_axes(Axes(**axes))
    return opts, Axes(**axes), cfg


def _check_axes(axes: Axes) -> None:
    """Axes that would silently override or be ignored by others are refused."""
    if axes.seeds and axes.sweep and "seed" in axes.sweep:
        raise ConfigError("seeds= and sweep.seed= both given: use one")


def absolute(overrides: dict) -> dict:
    """The user's overrides with each path field given relative to the working directory
    (`./m`, `../m`, or a name that is a folder here) made absolute: a cell folder reads `../`
    paths relative to itself (`e2e.io.read_cell_config`), and jobs run elsewhere. A grid's
    own defaults (`gpt2`, a hub dataset) are never taken for a folder of the cwd."""
    def fix(v):
        rel = isinstance(v, str) and v and not Path(v).is_absolute()
        return str(Path(v).resolve()) if rel and (v.startswith(".") or Path(v).exists()) else v
    return {k: fix(v) if k in PATH_FIELDS else v for k, v in overrides.items()}
