"""One frozen, typed config per cell, with a strict JSON round-trip and validated values.

Defaults are the paper's GPT-2 small settings (Braun et al. 2024, App. A); grids override them.
Derived values (hook name, dictionary size, resolved loss coefficients) are computed by the code
that needs them and never written back here.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

# "ksvd": no SAE training; a dictionary fitted to the hook's activations by DB-KSVD (`ksvd`).
Setting = Literal["local", "e2e", "e2e_ds", "ksvd"]
SETTINGS: tuple[str, ...] = typing.get_args(Setting)
SAE_SETTINGS = ("local", "e2e", "e2e_ds")  # trained by gradient descent on a loss


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the field and what is allowed."""


def _require(ok: bool, name: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: must be {allowed}")


@dataclass(frozen=True)
class ModelConfig:
    # "gpt2" (Hugging Face hub or cache) or a local directory in the Hugging Face layout.
    name_or_path: str = "gpt2"

    def __post_init__(self) -> None:
        _require(bool(self.name_or_path), "model.name_or_path", "a model name or path", "")


@dataclass(frozen=True)
class DataConfig:
    # A local `datasets.save_to_disk` folder, or a hub dataset id (streamed).
    dataset: str = "apollo-research/Skylion007-openwebtext-tokenizer-gpt2"
    split: str = "train"
    # "input_ids": already tokenized (concatenated as is); anything else is a text column,
    # tokenized on the fly with the model's tokenizer and an EOS appended to every document.
    column: str = "input_ids"
    context_length: int = 1024
    # Streamed datasets only: the paper's shuffle buffer.
    shuffle_buffer: int = 1000
    # Held-out eval split; None keeps the paper's choice: the train split shuffled with seed + 42.
    eval_split: str | None = None
    eval_seed_offset: int = 42

    def __post_init__(self) -> None:
        _require(bool(self.dataset), "data.dataset", "a dataset path or hub id", self.dataset)
        _require(bool(self.column), "data.column", "a column name", self.column)
        _require(self.context_length >= 2, "data.context_length", ">= 2", self.context_length)
        _require(self.shuffle_buffer >= 1, "data.shuffle_buffer", ">= 1", self.shuffle_buffer)


@dataclass(frozen=True)
class SAEConfig:
    # Dictionary size as a multiple of d_in; the paper's GPT-2 runs use 60 (46,080 elements).
    dict_size_to_input_ratio: float = 60.0
    # "relu": the paper's ReLU codes with the Lp sparsity term; "topk": the k largest
    # pre-activations per token, then ReLU (Gao et al. 2024; MFR), with no sparsity term.
    activation: Literal["relu", "topk"] = "relu"
    k: int = 0  # topk only

    def __post_init__(self) -> None:
        r = self.dict_size_to_input_ratio
        _require(r > 0, "sae.dict_size_to_input_ratio", "> 0", r)
        _require(self.activation in ("relu", "topk"), "sae.activation", "relu or topk",
                 self.activation)
        if self.activation == "topk":
            _require(self.k >= 1, "sae.k", ">= 1 with sae.activation=topk", self.k)
        else:
            _require(self.k == 0, "sae.k", "0 unless sae.activation=topk", self.k)


# Hungarian matching is O(n^3) per pair of SAEs per step; beyond this many dictionary elements
# a step would take minutes (46,080 elements: ~10^14 operations per pair).
HUNGARIAN_MAX_ELEMENTS = 4096
SIMILARITIES = ("hungarian", "max", "symmetric_max")


@dataclass(frozen=True)
class MFRConfig:
    """Mutual Feature Regularization (Marks et al. 2024): `n_saes` SAEs of the cell's config
    (init seeds seed, seed + 1000, ...) train on the same batches; with `coeff` > 0 each one's
    loss gets coeff * w(t) * mean over pairs of (1 - similarity of their dictionaries)."""

    n_saes: int = 1
    coeff: float = 0.0
    # w(t) = 0.5 (1 + cos(pi (T - t) / T)) for optimizer step t < T, then 1.
    warmup_steps: int = 100
    similarity: Literal["hungarian", "max", "symmetric_max"] = "symmetric_max"

    def __post_init__(self) -> None:
        _require(self.n_saes >= 1, "mfr.n_saes", ">= 1", self.n_saes)
        _require(self.coeff >= 0, "mfr.coeff", ">= 0", self.coeff)
        _require(self.coeff == 0 or self.n_saes >= 2, "mfr.coeff",
                 "0 with mfr.n_saes=1 (the penalty compares SAEs)", self.coeff)
        _require(self.warmup_steps >= 0, "mfr.warmup_steps", ">= 0", self.warmup_steps)
        _require(self.similarity in SIMILARITIES, "mfr.similarity", f"one of {SIMILARITIES}",
                 self.similarity)


@dataclass(frozen=True)
class SyntheticConfig:
    """Activations with known features (the MFR authors' generator): a Gaussian dictionary of
    `n_features` in `d` dimensions; each sample picks one of `n_groups` groups of `group_size`
    consecutive features and `active` of them (weights decay**i), coefficients U[0, 1)."""

    d: int = 256
    n_features: int = 512
    n_groups: int = 12
    group_size: int = 42
    active: int = 32
    decay: float = 0.99
    noise_std: float = 0.0
    # The authors' code drew one support per group per generation batch (all samples of a
    # group in a batch share it); off: every sample draws its own.
    shared_support_per_batch: bool = False
    truth_seed: int = 0  # the ground-truth dictionary's seed (the cell's seed orders samples)

    def __post_init__(self) -> None:
        for name in ("d", "n_features", "n_groups", "group_size", "active"):
            _require(getattr(self, name) >= 1, f"synthetic.{name}", ">= 1", getattr(self, name))
        _require(self.n_groups * self.group_size <= self.n_features, "synthetic.n_groups",
                 f"<= n_features / group_size ({self.n_features // self.group_size})",
                 self.n_groups)
        _require(self.active <= self.group_size, "synthetic.active",
                 f"<= group_size ({self.group_size})", self.active)
        _require(0 < self.decay <= 1, "synthetic.decay", "in (0, 1]", self.decay)
        _require(self.noise_std >= 0, "synthetic.noise_std", ">= 0", self.noise_std)


@dataclass(frozen=True)
class KSVDConfig:
    """DB-KSVD (Valentin et al. 2025; KSVD.jl), setting `ksvd`: K = dictionary ratio x d_in
    atoms fitted to `n_tokens` cached activations at the hook, minus their mean (the decoder
    bias), in sample batches of `batch_size` with one warm-started K-SVD iteration each, over
    `n_passes` passes. The grid's λ axis is `max_nnz`, the L0 budget of the sparse coding."""

    max_nnz: int = 16
    # Matching pursuit stops a sample when ||r|| / ||y|| < rtol (KSVD.jl's default 0.05).
    rtol: float = 0.05
    coder: Literal["mp", "omp"] = "mp"
    # Least-squares coefficients on each support after matching pursuit (KSVD.jl's default).
    refit: bool = True
    # "random": KSVD.jl's U(-0.5, 0.5) start; "data": K random centred activations.
    init: Literal["random", "data"] = "random"
    # The KSVD.jl paper script: 2.6M activations, batches of 2^16, 3 passes.
    n_tokens: int = 2_621_440
    batch_size: int = 65_536
    n_passes: int = 3
    # Atoms updated together against one residual (Jacobi inside, Gauss-Seidel across):
    # on tiny's activations all 1,024 at once explained 94.6% of the variance, 128 98.5%.
    atom_chunk: int = 128
    # Power-iteration steps of each atom's rank-1 SVD, warm-started at the atom.
    power_iters: int = 3
    # The activation cache (n_tokens x d_in float32, `activations.npy` in the cell) is
    # deleted once the cell is done unless kept.
    keep_activations: bool = False

    def __post_init__(self) -> None:
        for name in ("max_nnz", "n_tokens", "batch_size", "n_passes", "atom_chunk",
                     "power_iters"):
            _require(getattr(self, name) >= 1, f"ksvd.{name}", ">= 1", getattr(self, name))
        _require(0 <= self.rtol < 1, "ksvd.rtol", "in [0, 1)", self.rtol)
        _require(self.coder in ("mp", "omp"), "ksvd.coder", "mp or omp", self.coder)
        _require(self.init in ("random", "data"), "ksvd.init", "random or data", self.init)


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

    def __post_init__(self) -> None:
        _require(self.setting in SETTINGS, "loss.setting", f"one of {SETTINGS}", self.setting)
        _require(self.sparsity_coeff >= 0, "loss.sparsity_coeff", ">= 0", self.sparsity_coeff)
        _require(self.sparsity_p > 0, "loss.sparsity_p", "> 0", self.sparsity_p)
        for name in ("kl_coeff", "local_mse_coeff", "downstream_coeff"):
            v = getattr(self, name)
            _require(v is None or v >= 0, f"loss.{name}", "None or >= 0", v)


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
        _require(0 < self.lr < 1, "optim.lr", "in (0, 1)", self.lr)
        _require(self.warmup_samples >= 0, "optim.warmup_samples", ">= 0", self.warmup_samples)
        _require(0 <= self.min_lr_factor <= 1, "optim.min_lr_factor", "in [0, 1]",
                 self.min_lr_factor)
        _require(self.batch_size >= 1, "optim.batch_size", ">= 1", self.batch_size)
        _require(self.grad_accum_steps >= 1, "optim.grad_accum_steps", ">= 1",
                 self.grad_accum_steps)
        _require(self.n_samples >= self.batch_size * self.grad_accum_steps, "optim.n_samples",
                 ">= batch_size * grad_accum_steps (one optimizer step)", self.n_samples)
        _require(self.max_grad_norm > 0, "optim.max_grad_norm", "> 0", self.max_grad_norm)

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
                     "alive_pass_tokens",
                     "log_every_steps", "checkpoint_every_steps"):
            _require(getattr(self, name) >= 1, f"eval.{name}", ">= 1", getattr(self, name))
        _require(self.grad_norm_after_samples >= 0, "eval.grad_norm_after_samples", ">= 0",
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
        modes = ("disabled", "offline", "online")
        _require(self.mode in modes, "wandb.mode", f"one of {modes}", self.mode)


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
    seed: int = 0
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        _require(self.layer >= 0, "layer", ">= 0", self.layer)
        _require(self.seed >= 0, "seed", ">= 0", self.seed)
        _require(self.dtype in ("float32", "bfloat16"), "dtype", "float32 or bfloat16",
                 self.dtype)
        _require(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda",
                 self.device)
        _require(self.source in ("model", "synthetic"), "source", "model or synthetic",
                 self.source)
        if self.source == "synthetic":
            _require(self.loss.setting in ("local", "ksvd"), "loss.setting",
                     "local or ksvd with source=synthetic (there is no model for a KL)",
                     self.loss.setting)
        if self.loss.setting == "ksvd":
            _require(self.loss.sparsity_coeff == 0, "loss.sparsity_coeff",
                     "0 with loss.setting=ksvd (its sparsity is ksvd.max_nnz)",
                     self.loss.sparsity_coeff)
            _require(self.sae.activation == "relu" and self.mfr.n_saes == 1, "loss.setting",
                     "not ksvd with a TopK SAE or MFR (ksvd fits one dictionary, no encoder)",
                     self.loss.setting)
            if self.d_in_hint:
                check_n_dict(self, self.d_in_hint)
        if self.sae.activation == "topk":
            _require(self.loss.sparsity_coeff == 0, "loss.sparsity_coeff",
                     "0 with sae.activation=topk (TopK fixes L0 at k; there is no sparsity "
                     "term)", self.loss.sparsity_coeff)
        if self.mfr.similarity == "hungarian" and self.mfr.n_saes > 1:
            n_dict = n_dict_for(self.d_in_hint, self.sae.dict_size_to_input_ratio) \
                if self.d_in_hint else 0
            _require(n_dict <= HUNGARIAN_MAX_ELEMENTS, "mfr.similarity",
                     f"max or symmetric_max for dictionaries over {HUNGARIAN_MAX_ELEMENTS} "
                     f"elements (Hungarian matching is O(n^3) per pair per step; this one has "
                     f"{n_dict})", self.mfr.similarity)

    @property
    def lam(self) -> float:
        """The value on the grid's λ axis: the sparsity coefficient, or for a ksvd cell its L0
        budget `ksvd.max_nnz`."""
        return float(self.ksvd.max_nnz) if self.loss.setting == "ksvd" else \
            self.loss.sparsity_coeff

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
        return _build(cls, d, "")

    @classmethod
    def from_json(cls, text: str) -> CellConfig:
        return cls.from_dict(json.loads(text))


def n_dict_for(d_in: int, ratio: float) -> int:
    """Dictionary elements of a dictionary `ratio` times as wide as its input."""
    return int(round(d_in * ratio))


def normalized(cfg: CellConfig) -> CellConfig:
    """The cell with the sections its setting never reads at their defaults: `ksvd` for an
    SAE cell; `optim` and `mfr` for a ksvd cell. A grid's ksvd options then never change its
    SAE cells' ids (and finished work), nor its SAE options its ksvd cells'."""
    if cfg.loss.setting == "ksvd":
        return dataclasses.replace(cfg, optim=OptimConfig(), mfr=MFRConfig())
    return dataclasses.replace(cfg, ksvd=KSVDConfig())


def check_n_dict(cfg: CellConfig, d_in: int) -> None:
    """A ksvd dictionary needs K >= 1 atoms and a budget max_nnz <= K."""
    k = n_dict_for(d_in, cfg.sae.dict_size_to_input_ratio)
    _require(k >= 1, "sae.dict_size_to_input_ratio",
             f"large enough for K >= 1 atoms with d_in {d_in} (K = {k})",
             cfg.sae.dict_size_to_input_ratio)
    if cfg.loss.setting == "ksvd":
        _require(cfg.ksvd.max_nnz <= k, "ksvd.max_nnz", f"<= K = {k} atoms", cfg.ksvd.max_nnz)


def check_layer(cfg: CellConfig, n_layers: int) -> None:
    """The hook must exist in a model of `n_layers` blocks (and e2e_ds needs a later one)."""
    if cfg.layer >= n_layers:
        raise ConfigError(f"layer={cfg.layer} is invalid: the model has {n_layers} layers "
                          f"(0..{n_layers - 1})")
    if cfg.loss.setting == "e2e_ds" and cfg.layer >= n_layers - 1:
        raise ConfigError(f"layer={cfg.layer} is invalid for e2e_ds: no later resid_pre exists "
                          f"in a model of {n_layers} layers")


def pack_key(cfg: CellConfig) -> str:
    """Cells with the same key differ only in their loss and can train as one pack: the same
    model, layer, data, seed and batch schedule, so they see the same token batches. A ksvd
    cell has no batch schedule to share: it runs alone."""
    if cfg.loss.setting == "ksvd":
        return "ksvd:" + cfg.to_json()
    d = cfg.to_dict()
    d.pop("loss")
    return json.dumps(d, sort_keys=True)


def check_packable(cfgs: list[CellConfig]) -> None:
    """Raises ConfigError naming the fields (other than loss) in which the cells differ."""
    if len(cfgs) > 1 and any(c.loss.setting == "ksvd" for c in cfgs):
        raise ConfigError("a ksvd cell runs alone: it cannot be in a pack")
    first = leaves(cfgs[0].to_dict())
    for cfg in cfgs[1:]:
        other = leaves(cfg.to_dict())
        diff = sorted(k for k in first.keys() | other.keys()
                      if not k.startswith("loss.") and first.get(k) != other.get(k))
        if diff:
            raise ConfigError(f"cells of one pack may differ only in loss; these differ in {diff}")


def leaves(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _build(cls: type, d: Any, prefix: str) -> Any:
    """Builds dataclass `cls` from a dict, rejecting unknown keys and mistyped values."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {names}")
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in d.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, name + ".")
    if origin is Literal:
        choices = typing.get_args(tp)
        _require(value in choices, name, f"one of {list(choices)}", value)
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            _require(type(None) in args, name, "not None", value)
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, name)
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(ok, name, "a number", value)
        return float(value)
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _require(ok, name, "an integer", value)
        return value
    if tp is bool:
        _require(isinstance(value, bool), name, "true or false", value)
        return value
    if tp is str:
        _require(isinstance(value, str), name, "a string", value)
        return value
    raise TypeError(f"unsupported config type {tp} for {name}")


def field_types() -> dict[str, Any]:
    """Dotted field name -> declared type, for every leaf field of CellConfig."""
    out: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, tp in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{name}.")
            else:
                out[prefix + name] = tp

    walk(CellConfig, "")
    return out


def with_overrides(cfg: CellConfig, overrides: dict[str, Any]) -> CellConfig:
    """Returns cfg with dotted-name overrides applied, validated like a loaded config."""
    d = cfg.to_dict()
    for key, value in overrides.items():
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown config field {key!r}; valid: {sorted(field_types())}")
            node = node[p]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(f"unknown config field {key!r}; valid: {sorted(field_types())}")
        node[parts[-1]] = value
    return CellConfig.from_dict(d)
