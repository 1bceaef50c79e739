"""Fused and compiled pieces of a training step, below the losses that use them; the chip
kind it runs on (`chip`) and the heap it allocates from (`heap`)."""

from e2e.kernels.compiled import Compiled
from e2e.kernels.kl import (
    CleanTarget,
    kl_chunk_tokens,
    kl_sum,
    soft_cap,
    unembed_kl_sum,
    unembed_logits,
)

__all__ = ["CleanTarget", "Compiled", "kl_chunk_tokens", "kl_sum", "soft_cap",
           "unembed_kl_sum", "unembed_logits"]
