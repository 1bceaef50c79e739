"""Massive activations of a real LM, per layer, on the SmolLM2 corpus: the residual's norm at
position 0 and at the special tokens (document separators) against the other positions, and
what the positions a dictionary is left (`data.skip_positions=1`, `data.exclude_tokens=special`,
then `data.exclude_norm_multiple=10`: `e2e.model.positions`) still hold (docs/real-lm.md).

    python benchmarks/real_lm_positions.py root=runs  # after grid=smollm2 built its model
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from e2e.config import DataConfig, ModelConfig
from e2e.data.tokens import TokenStream
from e2e.model import load_model, positions_for
from jobs.plan.grids import pretrain_dir


def main(root: str = "runs", rows: int = 16, context: int = 128) -> None:
    lm = pretrain_dir(Path(root), "smollm2")
    model = load_model(ModelConfig(str(lm / "model")))
    data = DataConfig(dataset=str(lm / "data"), context_length=context, eval_split="validation",
                      skip_positions=1, exclude_tokens="special", exclude_norm_multiple=10.0)
    tokens = TokenStream(data, model.tokenizer, 0, "validation").next_batch(rows)
    positions = positions_for(data, model.tokenizer, model.cfg.d_vocab)
    kept = positions.kept(tokens)  # by token: position 0 and the special tokens out
    special = ~kept
    special[:, 0] = False  # the special tokens after position 0
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    print(f"{rows} rows of {context} tokens: {int(special.sum())} special tokens after position "
          f"0, {int(kept.sum())} kept positions. Norm of resid_pre (mean at position 0 and at "
          "the special tokens, median at the kept ones); shares of Σ‖x‖² held by position 0 "
          "(of all positions) and by the special tokens (of positions >= 1); the kept "
          "positions' largest norm over their median, and the share of their Σ‖x‖² held by "
          "the largest 1%; then the norm rule (> 10x the median): positions it leaves out, "
          "and the largest 1%'s share after it")
    print(f"{'layer':>5} {'pos 0':>8} {'special':>8} {'kept':>6} {'pos 0 share':>11} "
          f"{'special share':>13} {'kept max/med':>12} {'kept top 1%':>11} {'by norm':>7} "
          f"{'then top 1%':>11}")
    for layer in range(model.cfg.n_layers):
        sq = cache[f"blocks.{layer}.hook_resid_pre"].float().square().sum(-1)
        n = sq.sqrt()
        rest = sq[:, 1:].sum()
        k = n[kept]
        by_norm = positions.kept(tokens, cache[f"blocks.{layer}.hook_resid_pre"])
        print(f"{layer:>5} {float(n[:, 0].mean()):>8.0f} {float(n[special].mean()):>8.0f} "
              f"{float(k.median()):>6.0f} {float(sq[:, 0].sum() / sq.sum()):>11.1%} "
              f"{float(sq[special].sum() / rest):>13.1%} "
              f"{float(k.max() / k.median()):>11.1f}x {_top_share(k):>11.1%} "
              f"{int((kept & ~by_norm).sum()):>7} {_top_share(n[by_norm]):>11.1%}")


def _top_share(norms: torch.Tensor) -> float:
    """The share of Σ‖x‖² the largest 1% of these positions hold."""
    top = norms.square().sort(descending=True).values
    return float(top[:max(1, len(top) // 100)].sum() / top.sum())


if __name__ == "__main__":
    kw = dict(a.split("=", 1) for a in sys.argv[1:])
    main(kw.get("root", "runs"), int(kw.get("rows", 16)), int(kw.get("context", 128)))
