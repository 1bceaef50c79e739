"""The command line of every entry point: `python jobs/<name>.py key=value ...` (or
`python -m jobs.<name> ...`), parsed here and nowhere else.

Each value is converted to its declared type by `e2e.typed.from_text` (not by fire, which would
turn `1e6` into a float and `1,2` into a tuple); an unknown key fails with the list of valid
ones, and `run` turns a `ConfigError` into one line on stderr and exit status 1. `submit.py`
and `stage.py` take run options, grid axes (`layers`, `settings`, `sparsity_coeffs` for every
setting, `lambdas.<setting>` for one, `sweep.<field>`, `variants` of a grid that has them) and
any CellConfig field by dotted name (`optim.lr=1e-3`); the other entry points take the fields
of their own options dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from e2e.config import SETTINGS, CellConfig
from e2e.typed import ConfigError, field_types, from_text
from jobs.autointerp_config import AutoInterp
from jobs.finetune import Finetune


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
    gpus_per_cell: int = 1
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
    # (`jobs.finetune`); None without `finetune.settings`.
    finetune: Finetune | None = None
    # `autointerp=true autointerp.base_url=... autointerp.model=...`: the auto-interp step
    # after the analysis (`jobs.autointerp_config`); None without it.
    autointerp: AutoInterp | None = None


RUN_TYPES = typing.get_type_hints(RunOptions)
AXIS_TYPES = {"layers": tuple[int, ...], "settings": tuple[str, ...],
              "sparsity_coeffs": tuple[float, ...], "seeds": tuple[int, ...],
              "variants": tuple[str, ...],
              **{f"lambdas.{s}": tuple[float, ...] for s in SETTINGS},
              **{f"finetune.{k}": t for k, t in typing.get_type_hints(Finetune).items()},
              "autointerp": bool,
              **{f"autointerp.{k}": t for k, t in typing.get_type_hints(AutoInterp).items()}}


def split_tokens(tokens, positional: bool = False) -> tuple[list[tuple[str, str]], list[str]]:
    """(key, text) pairs of `key=value` tokens (a leading `--` is dropped), and the bare tokens
    when the entry point takes positional values (else a bare token is an error)."""
    pairs, bare = [], []
    for token in map(str, tokens):
        key, sep, text = token.partition("=")
        if sep and not key.strip():
            raise ConfigError(f"argument {token!r} has no key")
        if not sep:
            if positional:
                bare.append(token)
                continue
            raise ConfigError(f"argument {token!r} is not key=value")
        pairs.append((key.strip().lstrip("-"), text))
    return pairs, bare


def parse_options(tokens, cls: type, positional: str | None = None) -> Any:
    """The options dataclass `cls` from `key=value` tokens; with `positional`, bare tokens
    fill that (tuple) field."""
    types_ = typing.get_type_hints(cls)
    pairs, bare = split_tokens(tokens, positional is not None)
    values: dict[str, Any] = {}
    for key, text in pairs:
        if key not in types_:
            raise ConfigError(f"unknown key {key!r}; valid keys: {sorted(types_)}")
        values[key] = from_text(types_[key], text, key)
    if bare:
        values[positional] = values.get(positional, ()) + tuple(bare)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing {', '.join(f'{m}=' for m in missing)}")
    return cls(**values)


def run(main: Callable[..., Any]) -> None:
    """Runs an entry point `main(*tokens)` through fire; bad input is one line, no traceback.

    Without fire, the arguments go to `main` as they are: the host side of
    `slurm/array.sbatch` runs `jobs.containers` under the node's plain python3 (standard
    library only, which is all this module and `e2e.config` need)."""
    try:
        import fire
    except ImportError:
        fire = None
    # `--key=value` is `key=value`: handed to fire as a flag it would be dropped from `main`
    argv = [a[2:] if a.startswith("--") and "=" in a else a for a in sys.argv[1:]]
    if argv in (["--help"], ["-h"]):  # the entry point's own docstring, not fire's
        print((sys.modules[main.__module__].__doc__ or "").strip())
        return
    try:
        if fire is None:
            main(*argv)
        else:
            fire.Fire(main, command=argv)
    except (ConfigError, OSError) as e:  # bad input, or a root that cannot be written
        sys.exit(f"error: {e}")


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
    opts = RunOptions(**run)
    for name, low in (("pack", 0), ("gpus_per_cell", 0), ("cpus_per_cell", 0),
                      ("array_parallelism", 0), ("time", 0), ("mem_gb", 0)):
        if getattr(opts, name) < low:
            raise ConfigError(f"{name}={getattr(opts, name)} is invalid: must be >= {low}")
    if not opts.root.strip():
        raise ConfigError("root= is empty: name the shared output folder (default runs)")
    _check_axes(Axes(**axes))
    return opts, Axes(**axes), cfg


def _check_axes(axes: Axes) -> None:
    """Axes that would silently override or be ignored by others are refused."""
    if axes.seeds and axes.sweep and "seed" in axes.sweep:
        raise ConfigError("seeds= and sweep.seed= both given: use one")
    # λ lists of settings the grid does not train: `jobs.plan` (it knows the grid)
