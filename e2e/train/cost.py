"""What a cell's training costs: tokens through each part of the model and a FLOP estimate.

Tokens are counted per member of a pack as if it ran alone (a pack shares the clean pass, so
its members together cost less than the sum); the evaluation and the alive pass are left out.
FLOPs use the usual 2 per parameter per token forward and 4 backward (Kaplan et al. 2020),
2 for a backward through frozen weights (gradients of the inputs only), and leave out
attention's context-length term and the softmax over the vocabulary.
"""

from __future__ import annotations

PARTS = ("prefix", "suffix_clean", "suffix_patched", "sae")


def part_params(model, layer: int) -> tuple[int, int]:
    """Parameters of the blocks before the hook (the prefix), and of the blocks after it plus
    the unembedding (the suffix); (0, 0) without a model (synthetic activations)."""
    if model is None:
        return 0, 0
    blocks = [sum(p.numel() for p in b.parameters()) for b in model.blocks]
    return sum(blocks[:layer]), sum(blocks[layer:]) + model.W_U.numel()


def train_flops(tokens: dict[str, int], prefix_params: int, suffix_params: int,
                sae_params: int) -> float:
    """FLOPs of training from token counts per part (keys `PARTS`): the clean prefix and
    suffix forward, the patched suffix forward and backward to the SAE (frozen weights), and
    the SAE forward and backward (its own weights)."""
    return float(2 * prefix_params * tokens["prefix"] + 2 * suffix_params * tokens["suffix_clean"]
                 + 4 * suffix_params * tokens["suffix_patched"] + 6 * sae_params * tokens["sae"])
