"""Massive activations of a real LM: the residual's norm at position 0 against the other
positions, per layer, on the SmolLM2 corpus (docs/real-lm.md: why `data.skip_positions=1`).

    python benchmarks/real_lm_positions.py root=runs  # after grid=smollm2 built its model
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from e2e.config import DataConfig, ModelConfig
from e2e.data.tokens import TokenStream
from e2e.model import load_model
from jobs.plan.grids import pretrain_dir


def main(root: str = "runs", rows: int = 16, context: int = 128) -> None:
    lm = pretrain_dir(Path(root), "smollm2")
    model = load_model(ModelConfig(str(lm / "model")))
    data = DataConfig(dataset=str(lm / "data"), context_length=context, eval_split="validation")
    tokens = TokenStream(data, model.tokenizer, 0, "validation").next_batch(rows)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    print(f"{rows} rows of {context} tokens; norm of resid_pre (mean at position 0, median "
          "elsewhere) and position 0's share of the squared norm")
    print(f"{'layer':>5} {'pos 0':>9} {'others':>8} {'ratio':>7} {'share':>6}")
    for layer in range(model.cfg.n_layers):
        n = cache[f"blocks.{layer}.hook_resid_pre"].norm(dim=-1)
        share = float((n[:, 0] ** 2).sum() / (n ** 2).sum())
        first, rest = float(n[:, 0].mean()), float(n[:, 1:].median())
        print(f"{layer:>5} {first:>9.1f} {rest:>8.1f} {first / rest:>6.1f}x {share:>6.1%}")


if __name__ == "__main__":
    kw = dict(a.split("=", 1) for a in sys.argv[1:])
    main(kw.get("root", "runs"), int(kw.get("rows", 16)), int(kw.get("context", 128)))
