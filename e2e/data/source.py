"""Where a cell's activations come from, and the evaluation every kind of cell shares (the
evaluation needs the source: the model, or the synthetic generator's true features).

A `Source` is the frozen language model with its token streams (activations at the hook), or
the synthetic generator (activations with known features). SAE cells (`e2e.train`) and ksvd
cells (`e2e.ksvd.fit`) both read it, and both score their dictionaries with
`evaluate_dictionaries` and `alive_masks`, so their numbers are comparable by construction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2e.config import CellConfig, check_context, check_layer, check_sizes
from e2e.data.synthetic import SyntheticStream, truth_metrics
from e2e.data.tokenizer_id import check_same_tokenizer, rows_record, tokenizer_record
from e2e.data.tokens import TokenStream, eval_stream
from e2e.dictionary import Dictionary
from e2e.io import atomic_path
from e2e.metrics import evaluate_pack, evaluate_synthetic, fired
from e2e.model import Positions, clean_pass, load_model, positions_for, verify_split


@dataclass
class Source:
    model: Any | None  # None for synthetic activations
    d_in: int
    n_layers: int
    stream: TokenStream | SyntheticStream  # training samples, from the cell's seed
    make_eval_stream: Callable[[], TokenStream | SyntheticStream]  # a fresh one, from its start
    truth: torch.Tensor | None = None  # the true features of synthetic data
    # the positions the dictionaries see and are scored on (`data.skip_positions`,
    # `data.exclude_tokens`)
    positions: Positions = field(default_factory=Positions)

    @torch.no_grad()
    def activations(self, batch: torch.Tensor, layer: int) -> torch.Tensor:
        """The hook's activations for a batch of samples at the kept positions: (batch,
        pos - skip, d_in) for token rows ((n_kept, d_in) with excluded tokens), the batch
        itself for synthetic data."""
        if self.model is None:
            return batch
        p = self.positions
        return clean_pass(self.model, batch, layer, full=False, skip=p.skip, keep=p.keep(batch),
                          norm_multiple=p.norm_multiple).resid


def open_source(cfgs: list[CellConfig], device: torch.device, grid_dir: Path) -> Source:
    """Loads what the cells read (they share model, data and seed); checks their layers and
    sizes against the model (ConfigError before any work)."""
    cfg = cfgs[0]
    if cfg.source == "synthetic":  # sizes checked by the config itself (d is known)
        stream = SyntheticStream(cfg.synthetic, cfg.seed)
        _save_truth(stream.truth, grid_dir)
        return Source(None, cfg.synthetic.d, 0, stream,
                      lambda: SyntheticStream(cfg.synthetic, cfg.seed + cfg.data.eval_seed_offset),
                      stream.truth)
    model = load_model(cfg.model, device)
    check_same_tokenizer(rows_record(cfg.data),
                         tokenizer_record(model.tokenizer, cfg.model.name_or_path),
                         cfg.model.name_or_path, cfg.data.dataset)
    for c in cfgs:
        check_layer(c, model.cfg.n_layers)
        check_context(c, model.cfg.n_ctx)
        check_sizes(c, model.cfg.d_model)
    return Source(model, model.cfg.d_model, model.cfg.n_layers,
                  TokenStream(cfg.data, model.tokenizer, cfg.seed, cfg.data.split),
                  lambda: eval_stream(cfg.data, model.tokenizer, cfg.seed),
                  positions=positions_for(cfg.data, model.tokenizer, model.cfg.d_vocab))


def eval_batches(source: Source, cfg: CellConfig, device: torch.device) -> list[torch.Tensor]:
    """The cell's fixed eval batches (the same for every cell of a grid). On two rows of the
    first the split forward is checked against the model's own (`verify_split`:
    SplitForwardError); two, as the check holds full logits (GPT-2's 1,024 positions: 0.2 GB
    a row)."""
    evs = source.make_eval_stream()
    batches = [evs.next_batch(cfg.eval.batch_size).to(device) for _ in range(cfg.eval.n_batches)]
    if source.model is not None:
        verify_split(source.model, batches[0][:2], cfg.layer)
    return batches


@torch.no_grad()
def evaluate_dictionaries(source: Source, saes: list[Dictionary], layer: int,
                          batches: list[torch.Tensor]) -> list[dict[str, float]]:
    """Every metric of each dictionary (an SAE or a fitted one) spliced in at `layer`, in fp32
    whatever the cell's training dtype."""
    for s in saes:
        s.eval()
    if source.model is None:
        out = evaluate_synthetic(saes, batches)
        for values, s in zip(out, saes, strict=True):
            values.update(truth_metrics(s.dict_elements.detach(), source.truth))
    else:
        out = evaluate_pack(source.model, saes, layer, batches, source.positions)
    for s in saes:
        s.train()
    return out


@torch.no_grad()
def alive_masks(source: Source, saes: list[Dictionary], cfg: CellConfig, device: torch.device
                ) -> list[torch.Tensor]:
    """Per dictionary, which elements fire (non-zero code) on `eval.alive_pass_tokens` tokens
    of the eval stream, from its start: (n_dict,) bool each; in fp32, as every metric."""
    masks = [torch.zeros(s.n_dict, dtype=torch.bool, device=device) for s in saes]
    evs = source.make_eval_stream()
    for _ in range(cfg.alive_pass_batches):
        batch = evs.next_batch(cfg.eval.batch_size).to(device)
        resid = source.activations(batch, cfg.layer)
        for mask, sae in zip(masks, saes, strict=True):
            c = sae.encode(resid)
            mask |= fired(c)
    return masks


def _save_truth(truth: torch.Tensor, grid_dir: Path) -> None:
    """The ground-truth dictionary beside the grid (`_truth/<sha>.npy`), so anyone can
    re-check the recovery numbers; the same truth is written once."""
    arr = truth.numpy()
    path = grid_dir / "_truth" / f"{hashlib.sha256(arr.tobytes()).hexdigest()[:12]}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)
