"""Token streams: fixed-context rows from an HF dataset, in a seeded order, resumable in O(1).

Documents are concatenated with EOS between them and cut into rows of `context_length`; no BOS
is added (the paper). A pre-tokenized column (`input_ids`) is concatenated as it is, since its
rows already carry their EOS separators. The stream's position (epoch, document cursor, and the
tokens carried over into the next row) is a small state dict a checkpoint stores. Every source
resumes exactly:
- a local dataset: its epoch's permutation is recomputed from the seed, O(1);
- a staged folder (`e2e.data.stage`) holds the rows themselves in stream order, O(1);
- a streamed (hub) dataset: its own saved state restarts the shuffle buffer empty, so the resumed
  documents differ (0 of 20 batches equal on a stand-in, tests/test_data.py). It is replayed from
  its epoch's start instead, skipping the documents already read untokenised; the cost is one
  read of those documents (at the paper's 400M tokens, at most one pass over the ~0.4M
  OpenWebText documents an epoch holds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from e2e.config import ConfigError, DataConfig
from e2e.data.staged import StagedRows, StageError, is_staged
from e2e.rng import generator

# Documents read in a row without a token a row could use (EOS apart): past this, or a whole
# epoch without one, a stream gives up. A dataset of empty rows would otherwise spin for ever,
# and a spinning stream never returns to the training loop's preemption check.
MAX_EMPTY_DOCS = 10_000
# Rows `check_dataset` reads for one with a usable value before the plan refuses the dataset.
PROBE_ROWS = 1_000


class DataUnavailableError(ConfigError):
    """The dataset can be neither opened locally nor streamed, or holds no usable row (bad
    input: one line for the user, `jobs.cli.run`)."""


def _open_local(path: Path, split: str):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (IndexError, ValueError, FileNotFoundError) as e:  # datasets 4 fails so on 0 rows
        raise DataUnavailableError(f"{path} cannot be read as a saved dataset (one with no "
                                   f"rows?): {type(e).__name__}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataUnavailableError(f"{path} has no split {split!r}; it has {list(ds)}")
        ds = ds[split]
    return ds


def _open_streaming(name: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:  # the hub client raises many types; all mean "not reachable"
        raise DataUnavailableError(f"cannot stream dataset {name!r} split {split!r}: {e}") from e


def check_dataset(cfg: DataConfig) -> None:
    """Fails fast (before submission) if the train and eval sources cannot be opened."""
    if is_staged(cfg):
        try:
            for split in {cfg.split, cfg.eval_split or cfg.split}:
                StagedRows(cfg, split)
        except StageError as e:
            raise DataUnavailableError(str(e)) from None
        return
    for split in {cfg.split, cfg.eval_split or cfg.split}:
        if Path(cfg.dataset).exists():
            ds = _open_local(Path(cfg.dataset), split)
            if cfg.column not in ds.column_names:
                raise DataUnavailableError(
                    f"{cfg.dataset} split {split!r} has no column {cfg.column!r}; "
                    f"columns: {ds.column_names}")
            if not _has_usable_row(ds, cfg.column):
                raise DataUnavailableError(
                    f"{cfg.dataset} split {split!r} has no usable row: its {len(ds):,} rows' "
                    f"{cfg.column!r} are all empty")
        else:
            _open_streaming(cfg.dataset, split)


def _usable(values) -> bool:
    return any(len(v.strip() if isinstance(v, str) else v) for v in values)


def _spread(n: int) -> list[int]:
    """PROBE_ROWS row indices spread evenly over n rows, first and last included (all of them
    for fewer)."""
    return sorted({int(i) for i in torch.linspace(0, n - 1, min(n, PROBE_ROWS))})


def _has_usable_row(ds, column: str) -> bool:
    """Whether some row of `column` is not empty: PROBE_ROWS rows spread over the dataset
    first, then, only when all of those are empty, every row a chunk at a time."""
    if not len(ds):
        return False
    if _usable(ds.select(_spread(len(ds)))[column]):
        return True
    return any(_usable(ds[i:i + 10_000][column]) for i in range(0, len(ds), 10_000))


def largest_token_id(cfg: DataConfig) -> int | None:
    """The largest id among PROBE_ROWS rows spread over each split a cell reads, for a local
    pre-tokenized dataset (not staged); None otherwise. The plan compares it with the model's
    vocabulary (an id past the embedding fails a cell with an IndexError)."""
    if cfg.column != "input_ids" or is_staged(cfg) or not Path(cfg.dataset).exists():
        return None
    top = -1
    for split in {cfg.split, cfg.eval_split or cfg.split}:
        ds = _open_local(Path(cfg.dataset), split)
        top = max([top, *(max(r) for r in ds.select(_spread(len(ds)))[cfg.column] if len(r))])
    return top if top >= 0 else None


class TokenStream:
    """Yields (batch, context_length) int64 token batches forever, in epochs."""

    def __init__(self, cfg: DataConfig, tokenizer: Any, seed: int, split: str):
        self.cfg, self.tokenizer, self.seed, self.split = cfg, tokenizer, seed, split
        self.local = Path(cfg.dataset).exists()
        self.tokenized = cfg.column == "input_ids"
        self.eos = tokenizer.eos_token_id if tokenizer is not None else None
        if not self.tokenized and self.eos is None:
            raise DataUnavailableError("a text column needs a tokenizer with an EOS token")
        self.epoch, self.cursor, self.carry = 0, 0, []
        self._empty = 0  # documents read in a row without a usable token
        self._staged = StagedRows(cfg, split) if self.local and is_staged(cfg) else None
        self._ds = (_open_local(Path(cfg.dataset), split)
                    if self.local and self._staged is None else None)
        self._order: torch.Tensor | None = None
        self._stream_iter = None

    # -- documents --------------------------------------------------------------------------
    def _doc_tokens(self, example: dict) -> list[int]:
        value = example[self.cfg.column]
        if self.tokenized:
            return list(value)
        return self.tokenizer(value, add_special_tokens=False)["input_ids"] + [self.eos]

    def _next_local_doc(self) -> list[int]:
        if self._order is None:
            g = generator(self.seed, self.epoch)
            self._order = torch.randperm(len(self._ds), generator=g)
        if not len(self._order):
            raise DataUnavailableError(f"{self.cfg.dataset} split {self.split!r} has no rows")
        if self.cursor >= len(self._order):
            self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
            return self._next_local_doc()
        idx = int(self._order[self.cursor])
        self.cursor += 1
        return self._doc_tokens(self._ds[idx])

    def _open_stream_at_cursor(self):
        """The epoch's shuffled stream, past the `cursor` documents already read (replayed:
        the order is a function of seed and epoch alone, the saved buffer is not)."""
        ds = _open_streaming(self.cfg.dataset, self.split)
        ds = ds.shuffle(seed=self.seed, buffer_size=self.cfg.shuffle_buffer)
        ds.set_epoch(self.epoch)
        it = iter(ds)
        for _ in range(self.cursor):
            next(it)
        return it

    def _next_stream_doc(self) -> list[int]:
        if self._stream_iter is None:
            self._stream_iter = self._open_stream_at_cursor()
        try:
            doc = next(self._stream_iter)
        except StopIteration:
            if not self.cursor:
                raise DataUnavailableError(
                    f"{self.cfg.dataset} split {self.split!r} has no rows") from None
            self.epoch, self.cursor, self._stream_iter = self.epoch + 1, 0, None
            return self._next_stream_doc()
        self.cursor += 1
        return self._doc_tokens(doc)

    # -- rows -------------------------------------------------------------------------------
    def next_batch(self, batch_size: int) -> torch.Tensor:
        if self._staged is not None:  # the cursor counts rows
            batch = self._staged.take(self.cursor, batch_size)
            self.cursor += batch_size
            return batch
        n = self.cfg.context_length
        rows = []
        while len(rows) < batch_size:
            while len(self.carry) < n:
                doc = self._next_local_doc() if self.local else self._next_stream_doc()
                self.carry.extend(doc)
                self._empty = 0 if any(t != self.eos for t in doc) else self._empty + 1
                if self._empty >= MAX_EMPTY_DOCS:
                    raise DataUnavailableError(
                        f"{self.cfg.dataset} split {self.split!r}: {MAX_EMPTY_DOCS:,} documents "
                        f"in a row without a token in {self.cfg.column!r}; no usable rows")
            rows.append(self.carry[:n])
            self.carry = self.carry[n:]
        return torch.tensor(rows, dtype=torch.long)

    def state_dict(self) -> dict[str, Any]:
        """The position: documents (rows, for a staged folder) read this epoch, and the carry."""
        return {"epoch": self.epoch, "cursor": self.cursor, "carry": list(self.carry)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor, self.carry = state["epoch"], state["cursor"], list(state["carry"])
        self._order, self._stream_iter = None, None


def eval_stream(cfg: DataConfig, tokenizer: Any, seed: int) -> TokenStream:
    """The held-out split if configured, else the paper's train split with seed + offset."""
    if cfg.eval_split is not None:
        return TokenStream(cfg, tokenizer, seed, cfg.eval_split)
    return TokenStream(cfg, tokenizer, seed + cfg.eval_seed_offset, cfg.split)
