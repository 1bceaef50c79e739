"""`key=value` command-line overrides: parsed in one place, each converted to its declared type.

Run-level keys (where and how to run), grid axes (`layers`, `settings`, `sparsity_coeffs` for
every setting, `lambdas.<setting>` for one) and
any CellConfig field by dotted name (`optim.lr=1e-3`) are accepted; anything else fails with the
list of valid keys. Values are parsed here, not by fire, which would turn `1e6` into a float.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from e2e.config import SETTINGS, ConfigError, field_types


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


RUN_TYPES = typing.get_type_hints(RunOptions)
AXIS_TYPES = {"layers": tuple[int, ...], "settings": tuple[str, ...],
              "sparsity_coeffs": tuple[float, ...], "seeds": tuple[int, ...],
              **{f"lambdas.{s}": tuple[float, ...] for s in SETTINGS}}


def parse_value(text: str, tp: Any, key: str) -> Any:
    """Converts `text` to the declared type `tp`; errors name the key and the expected form."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null"):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return parse_value(text, inner, key)
    if origin is tuple:
        body = text.strip()
        if body[:1] + body[-1:] in ("[]", "()"):
            body = body[1:-1]
        items = [s.strip().strip("'\"") for s in body.split(",") if s.strip()]
        if not items:
            raise ConfigError(f"{key}={text!r} is invalid: must be a non-empty list like [1,2]")
        return tuple(parse_value(s, args[0], key) for s in items)
    if origin is Literal:
        if text not in args:
            raise ConfigError(f"{key}={text!r} is invalid: must be one of {list(args)}")
        return text
    try:
        if tp is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is invalid: must be {tp.__name__}") from None
    return text


def valid_keys() -> list[str]:
    return (sorted(RUN_TYPES) + sorted(AXIS_TYPES) + sorted(field_types())
            + ["sweep.<config field>"])


def parse_overrides(tokens: list[str]) -> tuple[RunOptions, Axes, dict[str, Any]]:
    """Splits `key=value` tokens into run options, grid axes and config-field overrides."""
    run: dict[str, Any] = {}
    axes: dict[str, Any] = {}
    cfg: dict[str, Any] = {}
    cfg_types = field_types()
    for token in tokens:
        key, sep, text = str(token).partition("=")
        key = key.strip().lstrip("-")
        if not sep:
            raise ConfigError(f"argument {token!r} is not key=value; valid keys: {valid_keys()}")
        if key in RUN_TYPES:
            run[key] = parse_value(text, RUN_TYPES[key], key)
        elif key in AXIS_TYPES:
            axes[key] = parse_value(text, AXIS_TYPES[key], key)
        elif key.startswith("sweep.") and key[6:] in cfg_types:
            field = key[6:]
            axes.setdefault("sweep", {})[field] = parse_value(text, tuple[cfg_types[field], ...],
                                                              key)
        elif key in cfg_types:
            cfg[key] = parse_value(text, cfg_types[key], key)
        else:
            raise ConfigError(f"unknown key {key!r}; valid keys: {valid_keys()}")
    for s in axes.get("settings", ()):
        if s not in SETTINGS:
            raise ConfigError(f"settings={s!r} is invalid: must be among {list(SETTINGS)}")
    lambdas = {k.split(".", 1)[1]: axes.pop(k) for k in list(axes) if k.startswith("lambdas.")}
    if lambdas:
        axes["lambdas"] = lambdas
    opts = RunOptions(**run)
    for name, low in (("pack", 0), ("gpus_per_cell", 0), ("cpus_per_cell", 0),
                      ("array_parallelism", 0), ("time", 0), ("mem_gb", 0)):
        if getattr(opts, name) < low:
            raise ConfigError(f"{name}={getattr(opts, name)} is invalid: must be >= {low}")
    return opts, Axes(**axes), cfg
