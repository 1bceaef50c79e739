"""Which positions of a row a dictionary acts on, is trained on and is scored on.

Real LMs write attention sinks into the residual: the first position, and (SmolLM2 from layer
12) every document separator mid-row, with norms 100x the rest (docs/real-lm.md). The field
leaves such tokens out: SAELens `exclude_special_tokens` (the tokenizer's special ids, dropped
from a training batch; at inference "excluded positions return the original activation"),
sparsify `exclude_tokens`, Karvonen's `sae_kl_finetune` (the clean output kept at BOS/EOS).

Here a position is kept when it is at or after `skip` (`data.skip_positions`) and its token id
is not in `exclude` (`data.exclude_tokens`). At the other positions the model keeps its clean
residual; every loss, metric and consumer sees the kept positions only (`e2e.model.split`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from e2e.config import ConfigError, DataConfig


@dataclass(frozen=True)
class Positions:
    """The kept positions of token rows: from `skip` on, token ids not in `exclude`."""

    skip: int = 0
    exclude: tuple[int, ...] = ()

    def keep(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """(batch, pos - skip) bool of the kept positions of `tokens` (batch, pos); None when
        no id is excluded (every position from `skip` on: the sliced form, no mask)."""
        if not self.exclude:
            return None
        ids = torch.tensor(self.exclude, dtype=tokens.dtype, device=tokens.device)
        return ~torch.isin(tokens[:, self.skip:], ids)

    def kept(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, pos) bool: `keep` over whole rows (the first `skip` positions False)."""
        out = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
        keep = self.keep(tokens)
        out[:, self.skip:] = True if keep is None else keep
        return out


def special_ids(tokenizer) -> tuple[int, ...]:
    """The ids SAELens's `exclude_special_tokens=True` means: the tokenizer's BOS, EOS, PAD
    and UNK and every token of its special-tokens map (`all_special_ids`), sorted."""
    ids = {getattr(tokenizer, f"{n}_token_id", None) for n in ("bos", "eos", "pad", "unk")}
    ids |= set(getattr(tokenizer, "all_special_ids", ()) or ())
    return tuple(sorted(i for i in ids if i is not None))


def positions_for(data: DataConfig, tokenizer, vocab: int) -> Positions:
    """The kept positions a cell's `data` asks for with this tokenizer and a model of `vocab`
    token ids; ConfigError in one line for `special` with a tokenizer that has none, or an id
    outside the vocabulary."""
    special, ids = data.exclude_spec
    if special:
        found = special_ids(tokenizer) if tokenizer is not None else ()
        if not found:
            raise ConfigError("data.exclude_tokens=special is invalid: the model's tokenizer "
                              "has no special tokens (give the ids: data.exclude_tokens=[0,1])")
        ids = tuple(sorted(set(ids) | set(found)))
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ConfigError(f"data.exclude_tokens={data.exclude_tokens} is invalid: id(s) "
                          f"{bad} outside the model's vocabulary (0..{vocab - 1})")
    return Positions(data.skip_positions, ids)
