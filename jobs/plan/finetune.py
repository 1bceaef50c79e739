"""The fine-tune stage of a grid: every local cell's children, trained end to end from it for a
fraction of its tokens (docs/finetune.md). No I/O.

`finetune.settings=[e2e,e2e_mse] finetune.fractions=[0.05,0.1]` adds, per local cell, one child
per (recipe, fraction). A child is an ordinary cell (`init.from_cell` names its parent): the
same model, layer, data, seed and λ, its own loss and budget. Recipes:
- `e2e`: the paper's KL (+ λ·sparsity);
- `e2e_mse`: Karvonen's mix, KL/2 + MSE/2 (arXiv 2503.17272);
- `e2e_ds`: the paper's KL + downstream MSE;
- `karvonen`: Karvonen's recipe as his code defines it: 0.5 (alpha_kl KL + MSE) with alpha_kl =
  MSE/KL recomputed every step, and for ReLU SAEs λ tracking the parent's L0
  (`e2e.train.karvonen`).
The first three balance their KL to the parent's MSE once, at the start (`loss.balance_kl`), so
the parent's λ keeps its meaning (unbalanced, the KL is 20-30x smaller than the MSE on the small
grids).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from e2e.config import CellConfig, ConfigError, LossConfig
from e2e.typed import with_overrides

RECIPES: dict[str, dict] = {
    "e2e": {"loss.setting": "e2e", "loss.balance_kl": True},
    "e2e_mse": {"loss.setting": "e2e", "loss.kl_coeff": 0.5, "loss.local_mse_coeff": 0.5,
                "loss.balance_kl": True},
    "e2e_ds": {"loss.setting": "e2e_ds", "loss.balance_kl": True},
    "karvonen": {"loss.setting": "e2e", "loss.kl_coeff": 0.5, "loss.local_mse_coeff": 0.5,
                 "loss.balance_kl_every_step": True, "loss.track_l0": True},
}


@dataclass(frozen=True)
class Finetune:
    settings: tuple[str, ...] = ()
    # Of the parent's training samples; a child reads the samples after its parent's in the
    # same stream (the fine-tune is a continuation on fresh tokens, as Karvonen's last 25M).
    fractions: tuple[float, ...] = (0.1,)
    # The child's peak LR as a multiple of the parent's. 0.1 is where the parent's schedule
    # ended (its min_lr_factor on the small grids): on the demo LM, 1.0 (a fresh Adam at the
    # parent's peak) threw the SAE off (CE loss increase 0.006 -> 0.13 in 10 steps) and never
    # recovered in 80 steps; 0.1 improved on the parent from the first eval (docs/finetune.md).
    lr_factor: float = 0.1
    # Linear warm-up over this fraction of the child's steps, then cosine decay to the
    # parent's floor: a fresh Adam on a new loss should not start at the full LR.
    warmup: float = 0.1
    # Evaluations over the fine-tune besides the one at its start and the final one (the
    # CE-against-compute curve): each runs the clean and patched passes over the eval rows,
    # which on a slow chip's short demo cost as much as its steps (grid=demo-fp32: 0).
    evals: int = 4

    def __post_init__(self) -> None:
        for s in self.settings:
            if s not in RECIPES:
                raise ConfigError(f"finetune.settings: {s!r} is not one of {sorted(RECIPES)}")
        for f in self.fractions:
            if not 0 < f <= 1:
                raise ConfigError(f"finetune.fractions: {f:g} is invalid: must be in (0, 1]")
        if not self.fractions:
            raise ConfigError("finetune.fractions is empty: give one or more, e.g. [0.1]")
        if len(set(self.fractions)) < len(self.fractions):
            raise ConfigError(f"finetune.fractions={list(self.fractions)} repeats a value")
        if not 0 < self.lr_factor <= 10:
            raise ConfigError(f"finetune.lr_factor={self.lr_factor:g} is invalid: must be in "
                              "(0, 10]")
        if self.evals < 0:
            raise ConfigError(f"finetune.evals={self.evals} is invalid: must be >= 0")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"finetune.warmup={self.warmup:g} is invalid: must be in [0, 1)")


def is_parent(cfg: CellConfig) -> bool:
    """A local SAE cell on a model (any architecture: issue 22), trained from scratch, has
    fine-tune children (MFR cells have their own report; a warm start of one by hand:
    `init.from_cell`)."""
    return (cfg.kind == "sae" and cfg.loss.setting == "local" and not cfg.init.warm
            and cfg.source == "model" and cfg.mfr.n_saes == 1)


def child(parent: CellConfig, parent_id: str, recipe: str, fraction: float, ft: Finetune
          ) -> CellConfig:
    """The child of `parent` (cell `parent_id`) for one recipe and fraction."""
    o = parent.optim
    steps = round(fraction * o.n_steps)
    if steps < 1:
        raise ConfigError(f"finetune.fractions: {fraction:g} of a parent's {o.n_steps} steps "
                          "is less than one step")
    n = steps * o.samples_per_step
    fields = dict(RECIPES[recipe])
    if parent.sae.activation != "relu":  # the L0 controller acts on λ, which only ReLU has
        fields.pop("loss.track_l0", None)
    return with_overrides(parent, {
        **fields, "init.from_cell": parent_id, "optim.n_samples": n,
        "optim.warmup_samples": round(ft.warmup * steps) * o.samples_per_step,
        "optim.lr": min(0.99, o.lr * ft.lr_factor),
        # `ft.evals` evaluations over the fine-tune (none: only its start's and its last)
        "eval.every_samples": max(o.samples_per_step, n // ft.evals) if ft.evals else n})


def recipe_of(cfg: CellConfig) -> str:
    """The recipe name of a warm-started cell's loss (or its setting when none matches)."""
    plain = replace(cfg, loss=LossConfig(sparsity_coeff=cfg.loss.sparsity_coeff,
                                         sparsity_p=cfg.loss.sparsity_p))
    for name, fields in RECIPES.items():
        if with_overrides(plain, fields) == cfg or with_overrides(
                plain, {**fields, "loss.track_l0": False}) == cfg:
            return name
    return cfg.loss.setting


def children(parents: list[tuple[str, CellConfig]], ft: Finetune
             ) -> list[tuple[str, float, CellConfig]]:
    """(parent id, fraction, child config) of every local parent, recipe and fraction."""
    return [(pid, f, child(p, pid, r, f, ft)) for f in ft.fractions for pid, p in parents
            if is_parent(p) for r in ft.settings]


def aligned_packs(parent_packs: list[list[str]], kids: list[tuple[str, float, str]],
                  fraction: float) -> list[list[str]]:
    """Task i of a fraction's child array: the children (ids) of the parents in pack i, so on
    SLURM it can wait for parent task i alone (`--dependency=aftercorr`). `kids`: (parent id,
    fraction, child id) of the children still to train; a pack without any is empty."""
    by_parent: dict[str, list[str]] = {}
    for pid, f, cid in kids:
        if f == fraction:
            by_parent.setdefault(pid, []).append(cid)
    packs = [[c for pid in pack for c in by_parent.get(pid, [])] for pack in parent_packs]
    while packs and not packs[-1]:
        packs.pop()
    return packs
