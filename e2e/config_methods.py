"""Config sections of the data a cell reads and of the methods beside the paper's SAEs (MFR,
synthetic activations, DB-KSVD, warm starts). `e2e.config.CellConfig` holds one of each (at
its defaults where unused); `e2e.config` exports them all."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from e2e.typed import require


def canonical_exclusions(value: str) -> str:
    """`data.exclude_tokens` in one spelling: "", "special", "[0,2]" (sorted, once each) or
    "special,0,2"; a value `DataConfig` refuses is returned as it is."""
    items = [x.strip() for x in value.strip().strip("[]").split(",")]
    if not value.strip() or not all(x == "special" or x.isdigit() for x in items):
        return value
    ids = ",".join(str(i) for i in sorted({int(x) for x in items if x != "special"}))
    if "special" not in items:
        return f"[{ids}]"
    return f"special,{ids}" if ids else "special"


@dataclass(frozen=True)
class DataConfig:
    # A local `datasets.save_to_disk` folder, or a hub dataset id (streamed).
    dataset: str = "apollo-research/Skylion007-openwebtext-tokenizer-gpt2"
    split: str = "train"
    # "input_ids": already tokenized (concatenated as is); anything else is a text column,
    # tokenized on the fly with the model's tokenizer and an EOS appended to every document.
    column: str = "input_ids"
    context_length: int = 1024
    shuffle_buffer: int = 1000  # streamed datasets only: the paper's shuffle buffer
    # Held-out eval split; None keeps the paper's choice: the train split shuffled with seed + 42.
    eval_split: str | None = None
    eval_seed_offset: int = 42
    # Positions the SAE is neither applied to, trained on nor scored on (they keep their clean
    # residual; `e2e.model.positions`, docs/real-lm.md): the first `skip_positions` of a row
    # (real LMs' attention sink); those of `exclude_tokens` ("special": the tokenizer's special
    # ids, SAELens's `exclude_special_tokens`; ids "[0,2]"; both "special,5"); those whose norm
    # exceeds `exclude_norm_multiple` x the batch's median (0: off). The paper's: none.
    skip_positions: int = 0
    exclude_tokens: str = ""
    exclude_norm_multiple: float = 0.0

    def __post_init__(self) -> None:
        require(bool(self.dataset), "data.dataset", "a dataset path or hub id", self.dataset)
        require(self.exclude_norm_multiple == 0 or 1 < self.exclude_norm_multiple < math.inf,
                "data.exclude_norm_multiple", "0 (off) or > 1 and finite",
                self.exclude_norm_multiple)
        items = r"\s*(special|\d+)\s*(,\s*(special|\d+)\s*)*"  # in brackets or none
        require(re.fullmatch(rf"\s*(\[{items}\]|{items})\s*|", self.exclude_tokens) is not None,
                "data.exclude_tokens", "special, token ids like [0,2], or both (special,5); "
                "a sweep's values hold no commas", self.exclude_tokens)
        # one spelling per value, so that `[2, 1,0]` and `[0,1,2]` name the same cell
        object.__setattr__(self, "exclude_tokens", canonical_exclusions(self.exclude_tokens))
        require(self.context_length >= 2, "data.context_length", ">= 2", self.context_length)
        # a row keeps a position that predicts a next token (the CE's, `e2e.metrics.ce_loss`)
        require(0 <= self.skip_positions <= self.context_length - 2, "data.skip_positions",
                f">= 0 and <= data.context_length - 2 ({self.context_length - 2}): a row "
                "must keep a position followed by a token", self.skip_positions)
        require(bool(self.column), "data.column", "a column name", self.column)
        require(self.shuffle_buffer >= 1, "data.shuffle_buffer", ">= 1", self.shuffle_buffer)



# Hungarian matching is O(n^3) per pair of dictionaries; beyond this many elements a matching
# takes minutes (46,080 elements: ~10^14 operations), too slow for a per-step MFR penalty.
HUNGARIAN_MAX_ELEMENTS = 4096


def hungarian_refusal(n: int) -> str | None:
    """Why a Hungarian matching of n elements is refused (too slow), or None."""
    if n <= HUNGARIAN_MAX_ELEMENTS:
        return None
    return (f"Hungarian matching of {n} elements: over {HUNGARIAN_MAX_ELEMENTS} it is too slow "
            "(O(n^3) per pair of dictionaries); use max or symmetric_max")


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
        require(self.n_saes >= 1, "mfr.n_saes", ">= 1", self.n_saes)
        require(self.coeff >= 0, "mfr.coeff", ">= 0", self.coeff)
        require(self.coeff == 0 or self.n_saes >= 2, "mfr.coeff",
                "0 with mfr.n_saes=1 (the penalty compares SAEs)", self.coeff)
        require(self.warmup_steps >= 0, "mfr.warmup_steps", ">= 0", self.warmup_steps)
        require(self.similarity in SIMILARITIES, "mfr.similarity", f"one of {SIMILARITIES}",
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
            require(getattr(self, name) >= 1, f"synthetic.{name}", ">= 1", getattr(self, name))
        require(self.n_groups * self.group_size <= self.n_features, "synthetic.n_groups",
                f"<= n_features / group_size ({self.n_features // self.group_size})",
                self.n_groups)
        require(self.active <= self.group_size, "synthetic.active",
                f"<= group_size ({self.group_size})", self.active)
        require(0 < self.decay <= 1, "synthetic.decay", "in (0, 1]", self.decay)
        require(self.noise_std >= 0, "synthetic.noise_std", ">= 0", self.noise_std)


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
            require(getattr(self, name) >= 1, f"ksvd.{name}", ">= 1", getattr(self, name))
        require(0 <= self.rtol < 1, "ksvd.rtol", "in [0, 1)", self.rtol)
        require(self.coder in ("mp", "omp"), "ksvd.coder", "mp or omp", self.coder)
        require(self.init in ("random", "data"), "ksvd.init", "random or data", self.init)


@dataclass(frozen=True)
class InitConfig:
    """Warm start from a finished dictionary of the same shape and hook (`e2e.train.warm`)."""

    from_cell: str = ""  # a cell id of the same grid (a sibling folder)
    from_path: str = ""  # a SAELens folder: cfg.json + sae_weights.safetensors
    # sha256 of the parent's sae_weights.safetensors when known at submission (a changed parent
    # is then a new cell); "" for a fine-tune stage, whose parent trains first (checked at start).
    sha256: str = ""

    def __post_init__(self) -> None:
        require(not (self.from_cell and self.from_path), "init.from_path",
                "empty when init.from_cell is given (one parent)", self.from_path)
        require("/" not in self.from_cell and self.from_cell not in (".", ".."),
                "init.from_cell", "a cell id of this grid (a folder name)", self.from_cell)
        require(not self.sha256 or self.warm, "init.sha256",
                "empty without init.from_cell or init.from_path", self.sha256)

    @property
    def warm(self) -> bool:
        return bool(self.from_cell or self.from_path)
