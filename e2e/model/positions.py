"""Which positions of a row a dictionary acts on, is trained on and is scored on.

Real LMs write attention sinks into the residual: the first position, and (SmolLM2 from layer
12) every document separator mid-row, with norms 100x the rest (docs/real-lm.md). The field
leaves such tokens out: SAELens `exclude_special_tokens` (the tokenizer's special ids, dropped
from a training batch; at inference "excluded positions return the original activation"),
sparsify `exclude_tokens`, Karvonen's `sae_kl_finetune` (the clean output kept at BOS/EOS).

Here a position is kept when it is at or after `skip` (`data.skip_positions`), its token id is
not in `exclude` (`data.exclude_tokens`) and, with `norm_multiple` (`data.exclude_norm_multiple`,
dictionary_learning's `max_activation_norm_multiple`), its clean residual's norm at the hook is
at most that multiple of the median over the batch's other kept positions (a sink no token id
names: SmolLM2's layer 12 has one in 2,030 positions, docs/real-lm.md). At the other positions
the model keeps its clean residual; every loss, metric and consumer sees the kept positions
only (`e2e.model.split`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from e2e.config import ConfigError, DataConfig


@dataclass(frozen=True)
class Positions:
    """The kept positions of token rows: from `skip` on, token ids not in `exclude`, clean
    residual norms at most `norm_multiple` times the median (0: no norm rule)."""

    skip: int = 0
    exclude: tuple[int, ...] = ()
    norm_multiple: float = 0.0

    def keep(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """(batch, pos - skip) bool of the positions of `tokens` (batch, pos) whose ids are
        kept (the norm rule needs the residual: `by_norm`, applied by the clean pass); None
        when no id is excluded (every position from `skip` on)."""
        if not self.exclude:
            return None
        ids = torch.tensor(self.exclude, dtype=tokens.dtype, device=tokens.device)
        return ~torch.isin(tokens[:, self.skip:], ids)

    def kept(self, tokens: torch.Tensor, resid: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, pos) bool: `keep` over whole rows (the first `skip` positions False), the
        norm rule applied to `resid` (batch, pos, d), the hook's clean residual, if given."""
        out = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
        keep = self.keep(tokens)
        if resid is not None:
            keep = by_norm(keep, resid[:, self.skip:], self.norm_multiple)
        out[:, self.skip:] = True if keep is None else keep.to(out.device)
        return out


def by_norm(keep: torch.Tensor | None, resid: torch.Tensor, multiple: float
            ) -> torch.Tensor | None:
    """`keep` (batch, pos; None: every position) less the positions whose residual norm in
    `resid` (batch, pos, d) exceeds `multiple` times the median over the kept ones; `keep`
    itself for multiple 0."""
    if not multiple:
        return keep
    norm = torch.linalg.vector_norm(resid.detach().float(), dim=-1)
    base = torch.ones_like(norm, dtype=torch.bool) if keep is None else keep.to(norm.device)
    if not base.any():
        return base
    return base & (norm <= multiple * norm[base].median())


def special_ids(tokenizer) -> tuple[int, ...]:
    """`data.exclude_tokens=special`: the tokenizer's BOS, EOS, PAD and UNK and every token of
    its special-tokens map (`all_special_ids`), sorted. Wider than SAELens 6.54's `True` (BOS,
    EOS, PAD, SEP, decoder start: `sae_lens.util.get_special_token_ids`), which misses
    SmolLM2-Instruct's separator `<|endoftext|>` (its UNK, id 0); cfg.json records the ids."""
    ids = {getattr(tokenizer, f"{n}_token_id", None) for n in ("bos", "eos", "pad", "unk")}
    ids |= set(getattr(tokenizer, "all_special_ids", ()) or ())
    return tuple(sorted(i for i in ids if i is not None))


def positions_for(data: DataConfig, tokenizer, vocab: int) -> Positions:
    """The kept positions a cell's `data` asks for with this tokenizer (None: none) and a
    model of `vocab` token ids; ConfigError as `excluded_ids` says."""
    found = special_ids(tokenizer) if tokenizer is not None else ()
    return Positions(data.skip_positions, excluded_ids(data, found, vocab),
                     data.exclude_norm_multiple)


def excluded_ids(data: DataConfig, special: tuple[int, ...] | None, vocab: int
                 ) -> tuple[int, ...]:
    """The ids `data.exclude_tokens` leaves out (sorted), given the tokenizer's `special` ids
    (None: not known yet, the listed ids alone are checked) and a vocabulary of `vocab` ids;
    ConfigError in one line for `special` where there are none, an id outside the vocabulary,
    or ids that cover it (no position would be left). The plan calls it before a grid's own
    LM is built (`jobs.plan.sources.check_own_lm`) and on a dry run of a hub grid."""
    items = [x.strip() for x in data.exclude_tokens.strip("[] ").split(",")]
    ids = {int(x) for x in items if x.isdigit()}
    if "special" in items and special is not None:
        if not special:
            raise ConfigError(f"data.exclude_tokens={data.exclude_tokens} is invalid: the "
                              "model's tokenizer has no special tokens (give the ids: "
                              "data.exclude_tokens=[0,1])")
        ids |= set(special)
    bad = sorted(i for i in ids if not 0 <= i < vocab)
    if bad:
        raise ConfigError(f"data.exclude_tokens={data.exclude_tokens} is invalid: id(s) "
                          f"{bad} outside the model's vocabulary (0..{vocab - 1})")
    if len(ids) >= vocab:
        raise ConfigError(f"data.exclude_tokens={data.exclude_tokens} is invalid: it names "
                          f"every id of the model's vocabulary ({vocab}), so no position is "
                          "left to train on")
    return tuple(sorted(ids))
