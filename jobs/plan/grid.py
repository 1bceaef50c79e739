"""A grid: plain data expanded into one CellConfig per (layer, setting, λ) cell; cell ids and
packs. No I/O.

A grid may need a pre-training job first (`pretrain`): its model and tokenized corpus live in
`<root>/<grid>/_pretrain-<hash>/` and the cells point there.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from e2e.arch.config import K_ACTIVATIONS
from e2e.config import SETTINGS, CellConfig, ConfigError, DataConfig, ModelConfig
from e2e.lm.gguf import GGUFLMConfig
from e2e.lm.pretrain import PretrainConfig
from e2e.train.loop import pack_key
from e2e.typed import leaves, with_overrides
from jobs.plan.finetune import Finetune, recipe_of


@dataclass(frozen=True)
class Variant:
    """A part of a grid with its own config fields and λ axis, e.g. one SAE architecture
    (`grid=architectures`): its cells are the grid's (layer, setting) cells over its λ."""

    name: str
    fields: dict[str, Any]  # dotted config field -> value, over the grid's base
    lambdas: dict[str, tuple[float, ...]]  # setting -> λ values (k for the TopK family)


@dataclass(frozen=True)
class Grid:
    name: str
    base: CellConfig
    layers: tuple[int, ...]
    # setting -> λ values; (layer, setting) entries in `layer_lambdas` take precedence.
    lambdas: dict[str, tuple[float, ...]]
    layer_lambdas: dict[tuple[int, str], tuple[float, ...]] = field(default_factory=dict)
    # Further axes: dotted config field -> values, crossed with every (layer, setting, λ) cell
    # (e.g. {"mfr.coeff": (0, 1), "seed": (0, 1, 2)}).
    sweep: dict[str, tuple] = field(default_factory=dict)
    # The settings the grid trains (its λ table may name fewer or more).
    settings: tuple[str, ...] = SETTINGS
    # Single cells beyond the cross product: (layer, setting, λ, {dotted field: value}), e.g.
    # the paper's seed-1 runs; kept when their layer and setting are among the chosen ones
    # and no λ values are given on the command line.
    extra_cells: tuple[tuple[int, str, float, dict], ...] = ()
    # GPU-hours of one cell per (layer, setting) on the cluster, for the dry run's estimate.
    gpu_hours: dict[tuple[int, str], float] = field(default_factory=dict)
    gpu_hours_source: str = "the paper's Table 6 per cell on one A100"
    # The grid's own LM, built on the shared root before its cells: pre-trained here, or a
    # real one from a registry package's GGUF.
    pretrain: PretrainConfig | GGUFLMConfig | None = None
    # SLURM resources per cell (minutes), sized for the grid's model.
    time_min: int = 60
    # Default pack size (cells of one array task sharing the frozen model's pass).
    pack: int = 1
    cpus_per_cell: int = 1
    # One line under the headline: what this grid's comparison does and does not show.
    headline_note: str = ""
    # Minutes per task measured on a 2-core machine ("pretrain", "sae" per pack, "finetune"
    # per fine-tune pack at fraction 1, "ksvd" per cell, "collect", "analyze"): the local
    # run's estimate of the time left.
    local_minutes: dict[str, float] = field(default_factory=dict)
    # That machine's dense matmul rate in the dtype the cells trained in there (GFLOP/s,
    # `e2e.kernels.chip.dense_gflops`): the first estimate scales the minutes by this CPU's rate
    # against it (`jobs.run.progress.machine_speed`); 0: not scaled.
    local_gflops: float = 0.0
    # The grid that runs instead on a CPU without native bf16, where these cells would train
    # in float32 at a fraction of the speed: the same comparison sized for that chip (`demo`).
    without_bf16: str = ""
    # Default container runtime and image (a path is relative to the repository root).
    container: str = "none"
    image: str = ""
    # Parts with their own fields and λ axes (each replaces `lambdas` and `layer_lambdas`).
    variants: tuple[Variant, ...] = ()
    # A cell's GPU-hours against `gpu_hours`, per (sae.activation, setting) where it differs
    # from 1 (Matryoshka's e2e cells run the model's suffix once per nested prefix).
    gpu_hours_factor: dict[tuple[str, str], float] = field(default_factory=dict)
    # The model's HF config sizes as its card gives them, for the dry run's memory estimate
    # where the config itself is not here (a hub model not yet downloaded).
    model_sizes: dict[str, Any] = field(default_factory=dict)
    # The grid's own fine-tune stage (`finetune.settings=` on the command line replaces it).
    finetune: Finetune | None = None

    def lambdas_for(self, layer: int, setting: str) -> tuple[float, ...]:
        return self.layer_lambdas.get((layer, setting), self.lambdas.get(setting, ()))

    def cell_gpu_hours(self, cfg: CellConfig) -> float | None:
        """The dry run's estimate for one cell on the cluster; None where unknown."""
        hours = self.gpu_hours.get((cfg.layer, cfg.loss.setting))
        factor = self.gpu_hours_factor.get((cfg.sae.activation, cfg.loss.setting), 1.0)
        return None if hours is None else hours * factor


# The token rows of a grid's own LM (`Grid.pretrain`); `expand` fills in the folder.
OWN_LM_DATA = DataConfig(dataset="<pretrain>", column="input_ids", eval_split="validation")

# The paper's Table 6 (one A100), hours per cell.
PAPER_HOURS = {(2, "local"): 3.75, (2, "e2e"): 12.4, (2, "e2e_ds"): 12.5,
               (6, "local"): 4.75, (6, "e2e"): 11.33, (6, "e2e_ds"): 11.4,
               (10, "local"): 5.32, (10, "e2e"): 10.2, (10, "e2e_ds"): 10.33}


def grid_pretrain_dir(root: Path, grid: Grid) -> Path:
    """`<root>/<grid>/_pretrain-<hash>`: a changed pre-training config gets a new folder, and
    so new cell ids, instead of silently reusing a model trained differently."""
    digest = hashlib.sha256(json.dumps(grid.pretrain.key(), sort_keys=True).encode()
                            ).hexdigest()[:6]
    return Path(root) / grid.name / f"_pretrain-{digest}"


def cell_id(cfg: CellConfig) -> str:
    """Readable id plus a short hash of the config, e.g. `L6-e2e-lam1.5-3f2a9c`,
    `syn-local-k16-n5-mfr1-s2-0b1c2d` (synthetic data, TopK, 5 SAEs with MFR, seed 2),
    `L2-ksvd-nnz8-5e6f7a` (DB-KSVD with an L0 budget of 8), `L2-ft40-e2e_mse-lam2-1c04b8`
    (40 steps of the KL+MSE fine-tune from a local cell of λ 2), `L2-e2e-k16-batchtopk-
    0a1b2c` (an architecture other than ReLU and TopK: issue 22), `L2-e2e-k16-topk-auxk-...`.

    The hash covers the fields that differ from CellConfig's defaults, so a new config field
    (added with a default) leaves every existing cell's id, and its finished work, in place.
    """
    default = leaves(CellConfig().to_dict())
    changed = {k: v for k, v in leaves(cfg.to_dict()).items()
               if k not in default or default[k] != v}
    digest = hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:6]
    parts = ["syn" if cfg.source == "synthetic" else f"L{cfg.layer}", cfg.loss.setting,
             cfg.lam_label]
    if cfg.init.warm:  # a fine-tune: its recipe and steps, e.g. `L2-ft40-e2e_mse-lam2-...`
        parts[1:2] = [f"ft{cfg.optim.n_steps}", recipe_of(cfg)]
    if cfg.sae.label not in ("relu", "topk"):  # the ids before issue 22 name neither
        parts.append(cfg.sae.label.replace("+", "-"))
    if cfg.mfr.n_saes > 1:
        parts.append(f"n{cfg.mfr.n_saes}-mfr{cfg.mfr.coeff:g}")
    if cfg.seed:
        parts.append(f"s{cfg.seed}")
    return "-".join([*parts, digest])


def expand(grid: Grid, root: Path, layers: tuple[int, ...] | None = None,
           settings: tuple[str, ...] | None = None,
           sparsity_coeffs: tuple[float, ...] | None = None,
           lambdas: dict[str, tuple[float, ...]] | None = None,
           sweep: dict[str, tuple] | None = None,
           variants: tuple[str, ...] | None = None) -> list[CellConfig]:
    """All cells of the grid, with axis overrides (layers, settings, one λ list for all,
    λ lists per setting, further config-field axes merged over the grid's, the variants to
    keep); ConfigError for a variant the grid does not have."""
    base = grid.base
    if grid.pretrain is not None:
        lm = grid_pretrain_dir(root, grid)
        base = replace(base, model=ModelConfig(str(lm / "model")),
                       data=replace(base.data, dataset=str(lm / "data")))
    axes = {**grid.sweep, **(sweep or {})}
    chosen = _chosen(grid, variants)
    parts = [(base, grid.lambdas_for)] if not grid.variants else [
        (with_overrides(base, v.fields), lambda _, s, v=v: v.lambdas.get(s, ()))
        for v in chosen]
    cells = []
    for part_base, lambdas_for in parts:
        for layer in layers or grid.layers:
            for setting in settings or grid.settings:
                lams = ((lambdas or {}).get(setting) or sparsity_coeffs
                        or lambdas_for(layer, setting))
                for lam in lams:
                    cell = _cell(part_base, layer, setting, lam)
                    for values in itertools.product(*axes.values()):
                        cells.append(with_overrides(cell, dict(zip(axes, values,
                                                                   strict=True))))
    chosen_lambdas = sparsity_coeffs or lambdas  # the user's λ values replace the extras too
    for layer, setting, lam, fields in () if chosen_lambdas else grid.extra_cells:
        if layer in (layers or grid.layers) and setting in (settings or grid.settings):
            cells.append(with_overrides(_cell(base, layer, setting, lam), fields))
    return cells


def k_axis(grid: Grid, axes, overrides: dict[str, Any]) -> tuple[Grid, Any, dict[str, Any]]:
    """(grid, axes) with one rule on every grid: the λ axis follows the architecture. An
    override to the TopK family (`sae.activation=batchtopk`) on a grid of ReLU SAEs makes λ
    the k of every cell: the λ values given (`sparsity_coeffs=`, `lambdas.<setting>=`), else
    `sae.k=` as the one value; with neither, ConfigError saying what to type (the grid's own λ
    values are sparsity coefficients, not k). Returns (grid, axes, overrides): the `sae.*`
    overrides move into the grid's base (the SAE cells have them, a ksvd cell needs none)."""
    act = overrides.get("sae.activation", grid.base.sae.activation)
    if grid.variants or grid.base.sae.uses_k or act not in K_ACTIVATIONS:
        return grid, axes, overrides
    unscaled = replace(grid.base, loss=replace(grid.base.loss, sparsity_coeff=0.0))
    sae = with_overrides(unscaled, {"sae.k": 1, **{k: v for k, v in overrides.items()
                                                   if k.startswith("sae.")}}).sae
    missing = [] if axes.sparsity_coeffs else [
        s for s in axes.settings or grid.settings if s != "ksvd" and s not in (axes.lambdas or {})]
    if missing and "sae.k" not in overrides:
        raise ConfigError(
            f"sae.activation={sae.activation} on grid={grid.name}: its λ axis is k, and the "
            f"grid's λ values are sparsity coefficients of a ReLU SAE; give k for "
            f"{', '.join(missing)}: sae.k=32 (one k), sparsity_coeffs=[16,32,64] (every "
            f"setting) or lambdas.{missing[0]}=[16,32,64]")
    if missing:
        axes = replace(axes, lambdas={**(axes.lambdas or {}),
                                      **{s: (overrides["sae.k"],) for s in missing}})
    rest = {k: v for k, v in overrides.items() if not k.startswith("sae.")}
    return replace(grid, base=replace(unscaled, sae=sae)), axes, rest


def _chosen(grid: Grid, names: tuple[str, ...] | None) -> tuple[Variant, ...]:
    """The grid's variants named in `names` (all of them for None), in the grid's order;
    ConfigError for a name it lacks, or for names on a grid without variants."""
    if names is not None and not grid.variants:
        raise ConfigError(f"variants= is given but grid={grid.name} has none (grids with "
                          "variants: architectures, architectures-gpt2)")
    there = [v.name for v in grid.variants]
    for name in names or ():
        if name not in there:
            raise ConfigError(f"variants={name!r} is invalid: grid={grid.name}'s variants are "
                              f"{there}")
    return tuple(v for v in grid.variants if names is None or v.name in names)


def _cell(base: CellConfig, layer: int, setting: str, lam: float) -> CellConfig:
    """The (layer, setting, λ) cell; for ksvd, λ is the L0 budget `ksvd.max_nnz`; for the TopK
    family (`sae.uses_k`), k."""
    if setting != "ksvd" and base.sae.uses_k:
        if lam != int(lam) or lam < 1:
            raise ConfigError(f"λ={lam:g} for sae.activation={base.sae.activation} is invalid: "
                              "its λ axis is k, a whole number >= 1 (lambdas.e2e=[8,16,32])")
        return replace(base, layer=layer, sae=replace(base.sae, k=int(lam)),
                       loss=replace(base.loss, setting=setting, sparsity_coeff=0.0))
    if setting != "ksvd":
        return replace(base, layer=layer, loss=replace(base.loss, setting=setting,
                                                       sparsity_coeff=float(lam)))
    if base.sae.uses_k:  # a grid turned TopK (`k_axis`): its ksvd cells have no encoder
        base = replace(base, sae=replace(base.sae, activation="relu", k=0))
    if lam != int(lam):
        raise ConfigError(f"λ={lam:g} for ksvd is invalid: its λ axis is the L0 budget "
                          "ksvd.max_nnz, a whole number >= 1 (lambdas.ksvd=[4,8,16])")
    return with_overrides(replace(base, layer=layer), {
        "loss.setting": "ksvd", "loss.sparsity_coeff": 0.0, "ksvd.max_nnz": int(lam)})


def make_packs(cfgs: list[CellConfig], size: int) -> list[list[int]]:
    """Indices of `cfgs` in packs of at most `size` cells that differ only in loss, in grid
    order. Packs are formed over all cells, done or not, so they stay the same on a rerun."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(pack_key(cfg), []).append(i)
    return [g[k:k + size] for g in groups.values() for k in range(0, len(g), size)]


