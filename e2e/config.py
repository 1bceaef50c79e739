"""One frozen, typed config per cell, with a strict JSON round-trip and validated values.

Defaults are the paper's GPT-2 small settings (Braun et al. 2024, App. A); grids override them.
Derived values (hook name, dictionary size, resolved loss coefficients) are computed by the code
that needs them and never written back here.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from e2e.arch.config import SAEConfig
from e2e.config_methods import (
    SIMILARITIES,
    DataConfig,
    InitConfig,
    KSVDConfig,
    MFRConfig,
    SyntheticConfig,
    hungarian_refusal,
)
from e2e.typed import ConfigError, build, require

__all__ = ["CellConfig", "ConfigError", "DataConfig", "EvalConfig", "InitConfig", "KSVDConfig",
           "LossConfig", "MFRConfig", "ModelConfig", "OptimConfig", "SAEConfig", "SETTINGS",
           "SAE_SETTINGS", "SIMILARITIES", "SyntheticConfig", "WandbConfig", "check_context",
           "check_layer", "check_sizes", "n_dict_for", "normalized"]

# "ksvd": no SAE training; a dictionary fitted to the hook's activations by DB-KSVD (`ksvd`).
Setting = Literal["local", "e2e", "e2e_ds", "ksvd"]
SETTINGS: tuple[str, ...] = typing.get_args(Setting)
SAE_SETTINGS = ("local", "e2e", "e2e_ds")  # trained by gradient descent on a loss


@dataclass(frozen=True)
class ModelConfig:
    # "gpt2" (Hugging Face hub or cache) or a local directory in the Hugging Face layout.
    name_or_path: str = "gpt2"
    # Training steps' frozen blocks compiled (`e2e.model.traced`); auto: for >= 2**24 tokens.
    compile: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self) -> None:
        require(bool(self.name_or_path), "model.name_or_path", "a model name or path", "")
        require(self.compile in ("auto", "on", "off"), "model.compile", "auto, on, off",
                self.compile)


@dataclass(frozen=True)
class LossConfig:
    setting: Setting = "e2e"
    # λ, the coefficient of the sparsity term (Lp norm over dictionary units / d_in).
    sparsity_coeff: float = 1.5
    sparsity_p: float = 1.0
    # None takes the paper's default for the setting (see e2e.losses.loss_coeffs).
    kl_coeff: float | None = None
    local_mse_coeff: float | None = None
    # Total downstream MSE coefficient, shared over the later resid_pre positions.
    downstream_coeff: float | None = None
    # Multiply the KL term by MSE/KL of the starting dictionary (eval batches, step 0), so the
    # reconstruction terms stay in an MSE-trained parent's units and its λ carries over to an
    # end-to-end fine-tune (Karvonen 2025, arXiv 2503.17272; docs/finetune.md).
    balance_kl: bool = False
    # Karvonen's code (e2e.train.karvonen): the KL term times (MSE / (KL + 1e-8)).detach() of
    # every batch; and for ReLU SAEs λ x0.999 / x1.001 while L0 is below / above its start.
    balance_kl_every_step: bool = False
    track_l0: bool = False

    def __post_init__(self) -> None:
        require(self.setting in SETTINGS, "loss.setting", f"one of {SETTINGS}", self.setting)
        require(self.sparsity_coeff >= 0, "loss.sparsity_coeff", ">= 0", self.sparsity_coeff)
        require(self.sparsity_p > 0, "loss.sparsity_p", "> 0", self.sparsity_p)
        require(not self.balance_kl_every_step or (
            self.setting in ("e2e", "e2e_ds") and (self.local_mse_coeff or 0) > 0
            and self.kl_coeff != 0), "loss.balance_kl_every_step",
            "false unless the loss has a KL term and a local MSE term (loss.local_mse_coeff "
            "> 0: it balances one against the other)", self.balance_kl_every_step)
        for name in ("kl_coeff", "local_mse_coeff", "downstream_coeff"):
            require((v := getattr(self, name)) is None or v >= 0, f"loss.{name}", "None or >= 0", v)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    # Linear warmup over this many samples, then cosine decay to min_lr_factor * lr.
    warmup_samples: int = 20_000
    min_lr_factor: float = 0.1
    batch_size: int = 8
    # The paper's effective batch of 16 = batch 8 x 2 accumulation steps.
    grad_accum_steps: int = 2
    n_samples: int = 400_000
    max_grad_norm: float = 10.0

    def __post_init__(self) -> None:
        require(0 < self.lr < 1, "optim.lr", "in (0, 1)", self.lr)
        require(self.warmup_samples >= 0, "optim.warmup_samples", ">= 0", self.warmup_samples)
        require(0 <= self.min_lr_factor <= 1, "optim.min_lr_factor", "in [0, 1]",
                self.min_lr_factor)
        require(self.batch_size >= 1, "optim.batch_size", ">= 1", self.batch_size)
        require(self.grad_accum_steps >= 1, "optim.grad_accum_steps", ">= 1",
                self.grad_accum_steps)
        require(self.n_samples >= self.batch_size * self.grad_accum_steps, "optim.n_samples",
                ">= batch_size * grad_accum_steps (one optimizer step)", self.n_samples)
        require(self.max_grad_norm > 0, "optim.max_grad_norm", "> 0", self.max_grad_norm)

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.grad_accum_steps

    @property
    def n_steps(self) -> int:
        return self.n_samples // self.samples_per_step


@dataclass(frozen=True)
class EvalConfig:
    every_samples: int = 40_000
    n_samples: int = 500
    batch_size: int = 8
    # The window over which a dictionary element must fire once to count as alive.
    alive_window_tokens: int = 500_000
    # Grad norm is reported as its mean after this many samples (the paper: 10k).
    grad_norm_after_samples: int = 10_000
    log_every_steps: int = 10
    checkpoint_every_steps: int = 500
    # After training, a pass over this many eval-stream tokens records which dictionary
    # elements fire (metrics.h5 `alive_mask`, for the geometry); the paper used 500k tokens.
    alive_pass_tokens: int = 500_000

    def __post_init__(self) -> None:
        for name in ("every_samples", "n_samples", "batch_size", "alive_window_tokens",
                     "alive_pass_tokens", "log_every_steps", "checkpoint_every_steps"):
            require(getattr(self, name) >= 1, f"eval.{name}", ">= 1", getattr(self, name))
        require(self.grad_norm_after_samples >= 0, "eval.grad_norm_after_samples", ">= 0",
                self.grad_norm_after_samples)

    @property
    def n_batches(self) -> int:
        """Eval batches a cell reads (at least one)."""
        return max(1, self.n_samples // self.batch_size)


@dataclass(frozen=True)
class WandbConfig:
    mode: Literal["disabled", "offline", "online"] = "disabled"
    project: str = "e2e-sae-hpc"

    def __post_init__(self) -> None:
        require(self.mode in ("disabled", "offline", "online"), "wandb.mode",
                "one of ('disabled', 'offline', 'online')", self.mode)


@dataclass(frozen=True)
class CellConfig:
    """Everything one (layer, setting, λ) cell needs; the job reads only this."""

    layer: int = 6
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mfr: MFRConfig = field(default_factory=MFRConfig)
    ksvd: KSVDConfig = field(default_factory=KSVDConfig)
    # "model": activations of the frozen language model at the hook; "synthetic": generated
    # activations with known features (`synthetic`), no model (local or ksvd only).
    source: Literal["model", "synthetic"] = "model"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    init: InitConfig = field(default_factory=InitConfig)
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: e2e.model.train_dtype
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        require(self.layer >= 0, "layer", ">= 0", self.layer)
        require(self.seed >= 0, "seed", ">= 0", self.seed)
        require(self.dtype in ("auto", "float32", "bfloat16"), "dtype",
                "auto, float32 or bfloat16", self.dtype)
        require(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda",
                self.device)
        require(self.source in ("model", "synthetic"), "source", "model or synthetic",
                self.source)
        if self.source == "synthetic":
            require(self.loss.setting in ("local", "ksvd"), "loss.setting",
                    "local or ksvd with source=synthetic (there is no model for a KL)",
                    self.loss.setting)
            masked = (self.data.skip_positions, self.data.exclude_tokens,
                      self.data.exclude_norm_multiple)
            require(not any(masked), "data.skip_positions/exclude_tokens/exclude_norm_multiple",
                    "unset with source=synthetic (its activations have no tokens)", masked)
        if self.kind == "ksvd":
            require(self.loss.sparsity_coeff == 0, "loss.sparsity_coeff",
                    "0 with loss.setting=ksvd (its sparsity is ksvd.max_nnz)",
                    self.loss.sparsity_coeff)
            require(self.sae.activation == "relu" and self.mfr.n_saes == 1, "loss.setting",
                    "not ksvd with a TopK SAE or MFR (ksvd fits one dictionary, no encoder)",
                    self.loss.setting)
        if self.sae.uses_k:
            require(self.loss.sparsity_coeff == 0, "loss.sparsity_coeff",
                    f"0 with sae.activation={self.sae.activation} (TopK and its family fix L0 "
                    "at k; there is no sparsity term)", self.loss.sparsity_coeff)
        if self.init.warm:
            key = "init.from_cell" if self.init.from_cell else "init.from_path"
            require(self.kind == "sae", key, "empty for a ksvd cell (it fits from scratch: "
                    "settings= without ksvd)", self.init.from_cell or self.init.from_path)
        if self.d_in_hint:
            check_sizes(self, self.d_in_hint)

    @property
    def kind(self) -> Literal["sae", "ksvd"]:
        """How the cell's dictionary is made: "sae" (trained by gradient descent on a loss,
        in packs) or "ksvd" (fitted to cached activations by DB-KSVD, alone)."""
        return "ksvd" if self.loss.setting == "ksvd" else "sae"

    @property
    def lam_label(self) -> str:
        """The λ part of a cell id: `lam1.5`, `k16` (TopK: L0 fixed at k), `nnz8` (ksvd)."""
        if self.kind == "ksvd":
            return f"nnz{self.ksvd.max_nnz}"
        if self.sae.uses_k:
            return f"k{self.sae.k}"
        return f"lam{self.loss.sparsity_coeff:g}"

    @property
    def lam(self) -> float:
        """The value on the grid's λ axis: the sparsity coefficient, k for the TopK family, or
        for a ksvd cell its L0 budget `ksvd.max_nnz`."""
        if self.kind == "ksvd":
            return float(self.ksvd.max_nnz)
        return float(self.sae.k) if self.sae.uses_k else self.loss.sparsity_coeff

    @property
    def alive_pass_batches(self) -> int:
        """Eval-stream batches of the post-training alive pass (at least one)."""
        per_batch = self.eval.batch_size * self.tokens_per_sample
        return max(1, -(-self.eval.alive_pass_tokens // per_batch))

    @property
    def tokens_per_sample(self) -> int:
        """A sample is a sequence of tokens from the model, or one synthetic activation."""
        return 1 if self.source == "synthetic" else self.data.context_length

    @property
    def d_in_hint(self) -> int | None:
        """d_in where the config alone knows it (synthetic data); else None."""
        return self.synthetic.d if self.source == "synthetic" else None

    @property
    def hook_name(self) -> str:
        """Where the SAE reads; "synthetic" for generated activations."""
        return "synthetic" if self.source == "synthetic" else f"blocks.{self.layer}.hook_resid_pre"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellConfig:
        return build(cls, d)

    @classmethod
    def from_json(cls, text: str) -> CellConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"not valid JSON: {e}") from None
        return cls.from_dict(d)


def n_dict_for(d_in: int, ratio: float) -> int:
    """Dictionary elements of a dictionary `ratio` times as wide as its input."""
    return int(round(d_in * ratio))


def normalized(cfg: CellConfig) -> CellConfig:
    """The cell with the sections its setting never reads at their defaults: `ksvd` for an
    SAE cell; `optim` and `mfr` for a ksvd cell. A grid's ksvd options then never change its
    SAE cells' ids (and finished work), nor its SAE options its ksvd cells'."""
    if cfg.kind == "ksvd":
        return dataclasses.replace(cfg, optim=OptimConfig(), mfr=MFRConfig())
    return dataclasses.replace(cfg, ksvd=KSVDConfig())


def check_sizes(cfg: CellConfig, d_in: int) -> None:
    """The checks that need the hook's width: K >= 1 dictionary elements, a ksvd budget
    max_nnz <= K, and Hungarian MFR matching only where it is not too slow."""
    k = n_dict_for(d_in, cfg.sae.dict_size_to_input_ratio)
    require(k >= 1, "sae.dict_size_to_input_ratio",
            f"large enough for K >= 1 atoms with d_in {d_in} (K = {k})",
            cfg.sae.dict_size_to_input_ratio)
    if cfg.kind == "ksvd":
        require(cfg.ksvd.max_nnz <= k, "ksvd.max_nnz", f"<= K = {k} atoms", cfg.ksvd.max_nnz)
    elif cfg.sae.uses_k:
        require(cfg.sae.k <= k, "sae.k", f"<= the dictionary size {k}", cfg.sae.k)
    if cfg.kind == "sae" and cfg.sae.activation == "matryoshka":
        w = cfg.sae.widths(k)
        require(all(a < b for a, b in zip([0, *w[:-1]], w, strict=True)), "sae.matryoshka_widths",
                f"fractions giving increasing widths >= 1 of {k} elements ({w})",
                cfg.sae.matryoshka_widths)
    if cfg.mfr.similarity == "hungarian" and cfg.mfr.n_saes > 1:
        refusal = hungarian_refusal(k)
        require(refusal is None, "mfr.similarity", f"max or symmetric_max here: {refusal}",
                cfg.mfr.similarity)


def check_layer(cfg: CellConfig, n_layers: int) -> None:
    """The hook must exist in a model of `n_layers` blocks (and e2e_ds needs a later one)."""
    if cfg.layer >= n_layers:
        raise ConfigError(f"layer={cfg.layer} is invalid: the model has {n_layers} layers "
                         f"(0..{n_layers - 1})")
    if cfg.loss.setting == "e2e_ds" and cfg.layer >= n_layers - 1:
        raise ConfigError(f"layer={cfg.layer} is invalid for e2e_ds: no later resid_pre exists "
                         f"in a model of {n_layers} layers")


def check_context(cfg: CellConfig, n_ctx: int | None) -> None:
    """The rows must fit a model of `n_ctx` positions (None: unknown)."""
    if n_ctx is not None and cfg.data.context_length > n_ctx:
        raise ConfigError(f"data.context_length={cfg.data.context_length} is invalid: the model "
                          f"has {n_ctx} positions")
