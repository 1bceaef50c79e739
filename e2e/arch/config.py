"""The `sae` section of a cell's config: the dictionary's width, its architecture and that
architecture's options (issue 22). Every option is named as SAELens 6.54 names it where SAELens
has one (`k`, `topk_threshold_lr`, `jumprelu_bandwidth`, `jumprelu_init_threshold`,
`matryoshka_widths` as fractions here, `aux_loss_coefficient` as `auxk_coeff`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from e2e.typed import require

Activation = Literal["relu", "topk", "batchtopk", "jumprelu", "matryoshka"]
ACTIVATIONS: tuple[str, ...] = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
# Architectures whose sparsity is set by k (the grid's λ axis is k; no sparsity term).
K_ACTIVATIONS = ("topk", "batchtopk", "matryoshka")
# The SAELens `architecture` each is saved as: BatchTopK and Matryoshka as SAELens saves them
# for inference, a JumpReLU with their learned threshold (SAELens's
# BatchTopKTrainingSAE.process_state_dict_for_saving_inference).
SAVED_AS = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu",
            "matryoshka": "jumprelu"}


@dataclass(frozen=True)
class SAEConfig:
    # Dictionary size as a multiple of d_in; the paper's GPT-2 runs use 60 (46,080 elements).
    dict_size_to_input_ratio: float = 60.0
    # "relu": the paper's ReLU codes with the Lp sparsity term; "topk": the k largest
    # pre-activations per token, then ReLU (Gao et al. 2024; MFR), with no sparsity term;
    # "batchtopk": the k * tokens largest over the batch (Bussmann et al. 2024), a learned
    # threshold at inference; "matryoshka": BatchTopK whose nested prefixes each reconstruct
    # (Bussmann et al. 2025); "jumprelu": per-element thresholds, the sparsity term is L0
    # (Rajamanoharan et al. 2024; Gemma Scope).
    activation: Activation = "relu"
    k: int = 0  # topk, batchtopk, matryoshka: codes per token (batchtopk: on average)
    # batchtopk, matryoshka: the inference threshold's moving-average rate (SAELens's default)
    topk_threshold_lr: float = 0.01
    # jumprelu: the straight-through estimator's kernel width and the thresholds' start
    # (SAELens's defaults; Gemma Scope used bandwidth 0.001 on normalised activations)
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.01
    # matryoshka: the inner prefixes' widths as fractions of the dictionary, increasing, each
    # < 1 (the whole dictionary is the outer level)
    matryoshka_widths: tuple[float, ...] = (0.0625, 0.25)
    # AuxK (Gao et al. 2024, App. A.2), TopK family only: coefficient (Gao: 1/32), the dead
    # latents used per token (0: d_in // 2, Gao App. B.1) and the tokens without firing after
    # which a latent is dead (Gao: 10M)
    auxk_coeff: float = 0.0
    auxk_k: int = 0
    auxk_dead_tokens: int = 10_000_000

    def __post_init__(self) -> None:
        r = self.dict_size_to_input_ratio
        require(r > 0, "sae.dict_size_to_input_ratio", "> 0", r)
        require(self.activation in ACTIVATIONS, "sae.activation", f"one of {ACTIVATIONS}",
                self.activation)
        if self.activation in K_ACTIVATIONS:
            require(self.k >= 1, "sae.k", f">= 1 with sae.activation={self.activation}", self.k)
        else:
            require(self.k == 0, "sae.k", f"0 unless sae.activation is one of {K_ACTIVATIONS}",
                    self.k)
        require(0 < self.topk_threshold_lr <= 1, "sae.topk_threshold_lr", "in (0, 1]",
                self.topk_threshold_lr)
        require(self.jumprelu_bandwidth > 0, "sae.jumprelu_bandwidth", "> 0",
                self.jumprelu_bandwidth)
        require(self.jumprelu_init_threshold >= 0, "sae.jumprelu_init_threshold", ">= 0",
                self.jumprelu_init_threshold)
        w = self.matryoshka_widths
        increasing = all(a < b for a, b in zip((0.0, *w), (*w, 1.0), strict=True))
        require(increasing, "sae.matryoshka_widths", "increasing fractions in (0, 1)", w)
        require(self.auxk_coeff >= 0, "sae.auxk_coeff", ">= 0", self.auxk_coeff)
        require(self.auxk_coeff == 0 or self.activation in K_ACTIVATIONS, "sae.auxk_coeff",
                f"0 unless sae.activation is one of {K_ACTIVATIONS} (AuxK revives their dead "
                "latents)", self.auxk_coeff)
        require(self.auxk_k >= 0, "sae.auxk_k", ">= 0", self.auxk_k)
        require(self.auxk_dead_tokens >= 1, "sae.auxk_dead_tokens", ">= 1",
                self.auxk_dead_tokens)

    @property
    def label(self) -> str:
        """The architecture in words: its activation, `+auxk` with AuxK (`relu`, `topk+auxk`)."""
        return self.activation + ("+auxk" if self.auxk_coeff else "")

    @property
    def uses_k(self) -> bool:
        """k is the sparsity control (and the grid's λ axis)."""
        return self.activation in K_ACTIVATIONS

    def widths(self, n_dict: int) -> list[int]:
        """matryoshka: every level's width, the inner prefixes' then n_dict."""
        return [int(round(f * n_dict)) for f in self.matryoshka_widths] + [n_dict]
