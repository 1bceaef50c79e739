"""Reachability of a grid's model and dataset, checked before any job is submitted."""

from __future__ import annotations

import os
from pathlib import Path

from e2e.config import CellConfig, ConfigError


def check_sources(cfg: CellConfig, own_lm: Path | None = None) -> None:
    """Raises ConfigError naming the model or dataset that cannot be loaded from here (a
    missing split, column or usable row included), or a model whose architecture's split
    forward is not verified. `own_lm`: the grid's own LM folder, whose model and rows (and a
    tokenizer check needing them) are skipped until it is built.

    With HF_HUB_OFFLINE=1 a hub name must be in the local HF cache; otherwise the hub is asked.
    """
    from e2e.data.tokens import DataUnavailableError, check_dataset, largest_token_id
    from e2e.model import check_architecture

    def pending(path: str) -> bool:
        return own_lm is not None and not (own_lm / "DONE").exists() and Path(
            path).is_relative_to(own_lm)

    name = cfg.model.name_or_path
    if pending(name):
        pass
    elif Path(name).exists():
        if not (Path(name) / "config.json").exists():
            raise ConfigError(f"model directory {name} has no config.json")
    else:
        from transformers import AutoConfig

        try:
            hf_cfg = AutoConfig.from_pretrained(name)
        except Exception as e:  # OSError, connection and hub errors alike
            offline = " with HF_HUB_OFFLINE=1 (not in the HF cache?)" if os.environ.get(
                "HF_HUB_OFFLINE") == "1" else ""
            raise ConfigError(f"model {name!r} cannot be loaded{offline}: {e}") from None
        check_architecture(hf_cfg.architectures, name)
    if not pending(name):
        check_tokenizer(cfg)
    if not pending(cfg.data.dataset):
        try:
            check_dataset(cfg.data)
            top = largest_token_id(cfg.data)
        except DataUnavailableError as e:
            raise ConfigError(str(e)) from None
        vocab = None if pending(name) else config_int(model_config(name) or {}, (
            "vocab_size", "n_vocab", "d_vocab"))
        if top is not None and vocab is not None and top >= vocab:
            raise ConfigError(f"data.dataset={cfg.data.dataset} holds token id {top:,} but the "
                              f"model's embedding has {vocab:,} rows (ids 0..{vocab - 1:,}): "
                              "rows made by another tokenizer?")
    # rows not built yet: their splits and column are checked by `check_own_lm` (the plan,
    # dry run included)


def dry_run_checks(cfg: CellConfig, reach_note: bool, grid=None) -> list[str]:
    """What a dry run checks without the network: a model folder's tokenizer (the excluded
    tokens included, as at submission); else the listed ids against the vocabulary of the
    grid's `model_sizes` (its own model; `special` waits for the tokenizer); the note that
    reachability waits for the submission (`reach_note`)."""
    if (Path(cfg.model.name_or_path) / "config.json").exists():
        check_tokenizer(cfg)
    elif grid is not None and grid.model_sizes and cfg.model == grid.base.model:
        from e2e.model.positions import excluded_ids

        vocab = config_int(grid.model_sizes, ("vocab_size", "n_vocab", "d_vocab"))
        if vocab:
            excluded_ids(cfg.data, None, vocab)  # the tokenizer's special ids: at submission
    return (["model and dataset reachability is checked at submission, not in a dry run"]
            if reach_note else [])


def check_own_lm(cfg: CellConfig, own_lm: Path, tokens: tuple[int, tuple[int, ...]]) -> None:
    """ConfigError in one line for what a grid's own LM (`own_lm`, perhaps not built yet) will
    not have, known before it is built (the dry run checks it too): a split or column of its
    token rows, excluded ids outside its vocabulary or covering it (`tokens`: its vocabulary
    size and special ids, `e2e.lm.pretrain.PretrainConfig.tokens`); once built, its tokenizer
    is checked as any model folder's (`check_tokenizer`)."""
    if Path(cfg.model.name_or_path).is_relative_to(own_lm) and not (own_lm / "DONE").exists():
        from e2e.model.positions import excluded_ids

        excluded_ids(cfg.data, tokens[1], tokens[0])
    if not Path(cfg.data.dataset).is_relative_to(own_lm):
        return
    for key, value, have in (("data.split", cfg.data.split, OWN_SPLITS),
                             ("data.eval_split", cfg.data.eval_split, (None, *OWN_SPLITS)),
                             ("data.column", cfg.data.column, ("input_ids",))):
        if value not in have:
            raise ConfigError(f"{key}={value} is invalid: the grid's own token rows "
                              f"({cfg.data.dataset}) will have {[h for h in have if h]}")


# The splits and column of a grid's own token rows (`e2e.lm.corpus`, tokenized by
# `e2e.lm.pretrain` and `e2e.lm.gguf`), checked before they are built.
OWN_SPLITS = ("train", "validation")


# Files one of which a model folder's tokenizer needs (a fast tokenizer's, or a slow one's
# config); without them transformers falls back to conversions that need sentencepiece.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_tokenizer(cfg: CellConfig) -> None:
    """ConfigError in one line for a model folder without a tokenizer (the cells tokenize
    text, the browser shows tokens with it), and for a text dataset whose tokenizer has more
    tokens than the model's embedding has rows: text that holds an added token's string gets
    an id the embedding cannot index (issue 43: a cell's IndexError after 23 s); and the
    excluded tokens (`data.exclude_tokens`: `special` of a tokenizer without special tokens,
    ids outside the vocabulary). Pre-tokenized rows are checked against the model's tokenizer
    by `check_tokenizers`."""
    name = cfg.model.name_or_path
    if Path(name).is_dir() and not any((Path(name) / f).exists() for f in TOKENIZER_FILES):
        raise ConfigError(f"model directory {name} has no tokenizer (none of "
                          f"{', '.join(TOKENIZER_FILES)}): save the model's tokenizer beside it")
    if cfg.data.column == "input_ids" and not cfg.data.exclude_tokens:
        return
    from transformers import AutoTokenizer

    from e2e.model import positions_for

    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # OSError, ValueError, a missing converter's ImportError alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"the tokenizer of {name} cannot be loaded: {type(e).__name__}: "
                          f"{first}") from None
    vocab = config_int(model_config(name) or {}, ("vocab_size", "n_vocab", "d_vocab"))
    positions_for(cfg.data, tok, vocab or len(tok))  # `special` with none, ids past the vocab
    if cfg.data.column != "input_ids" and vocab is not None and len(tok) > vocab:
        raise ConfigError(f"the tokenizer of {name} has {len(tok):,} tokens but the model's "
                          f"embedding {vocab:,} rows: ids from {vocab:,} on (its added tokens) "
                          f"would index past it; use a tokenizer without them, or resize the "
                          "model's embedding")


def model_config(name_or_path: str) -> dict | None:
    """The HF config of a local model folder or a hub model in the HF cache, as a dict; None
    if it cannot be known from here without downloading."""
    import json

    cfg_file = Path(name_or_path) / "config.json"
    if cfg_file.exists():
        return json.loads(cfg_file.read_text())
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, local_files_only=True).to_dict()
    except Exception:  # not cached: the shape is checked when the cell starts
        return None


def model_shape(name_or_path: str) -> tuple[int, int, int | None] | None:
    """(blocks, residual width, positions) of a local model folder or a hub model in the HF
    cache; None if they cannot be known from here without downloading. ConfigError for an
    architecture whose split forward is not verified (`e2e.model.VERIFIED_ARCHITECTURES`)."""
    if Path(name_or_path).is_absolute() and not Path(name_or_path).is_dir():
        raise ConfigError(f"model.name_or_path={name_or_path} is invalid: no such folder")
    d = model_config(name_or_path)
    return None if d is None else shape_from_config(d, name_or_path)


def known_shape(grid, cfg: CellConfig, source_cfg: CellConfig, own_model: str | None
                ) -> tuple[int, int, int | None] | None:
    """(blocks, width, positions) of the cells' model where known offline: the grid's own LM
    (`own_model`, built by its pre-training job), the model's folder or HF cache (the stage's,
    else the original's), else the grid's `model_sizes` for the grid's own model; None
    otherwise. ConfigError for an unverified architecture or a missing folder."""
    name, src = cfg.model.name_or_path, source_cfg.model.name_or_path
    if grid.pretrain is not None and src == own_model:
        return grid.pretrain.n_layers, grid.pretrain.d_model, grid.pretrain.n_ctx
    staged = model_shape(name) if name != src and Path(name).is_dir() else None
    return (staged or model_shape(src)
            or (shape_from_config(grid.model_sizes, src)
                if grid.model_sizes and source_cfg.model == grid.base.model else None))


def shape_from_config(d: dict, name_or_path: str) -> tuple[int, int, int | None] | None:
    """`model_shape` of an HF config dict (ConfigError for an unverified architecture)."""
    from e2e.model import check_architecture

    check_architecture(d.get("architectures"), name_or_path)
    depth = config_int(d, ("n_layer", "num_hidden_layers", "n_layers"))
    width = config_int(d, ("n_embd", "hidden_size", "d_model"))
    n_ctx = config_int(d, ("n_positions", "max_position_embeddings", "n_ctx"))
    return None if depth is None or width is None else (depth, width, n_ctx)


def config_int(d: dict, keys: tuple[str, ...]) -> int | None:
    """The first of `keys` an HF config dict holds as an int (architectures name a size
    differently: GPT-2's `n_embd` is Llama's `hidden_size`); None if none."""
    return next((d[k] for k in keys if isinstance(d.get(k), int)), None)


def check_tokenizers(cfgs: list[CellConfig], own_lm: Path | None) -> list[str]:
    """ConfigError in one line when a cell's token rows were made by another tokenizer than its
    model's (`e2e.data.tokenizer_id`); notes for what cannot be compared from here. `own_lm`:
    the grid's own LM folder (`_pretrain-<hash>`, perhaps not built yet), whose rows only its
    own model reads."""
    from e2e.data.tokenizer_id import (
        check_same_tokenizer,
        model_tokenizer_record,
        rows_record,
    )

    notes = []
    pairs = {(c.model.name_or_path, c.data) for c in cfgs
             if c.source == "model" and c.data.column == "input_ids"}
    for model, data in sorted(pairs, key=str):
        if own_lm is not None and data.dataset == str(own_lm / "data"):
            if model != str(own_lm / "model"):
                raise ConfigError(
                    f"model.name_or_path={model} would read this grid's own token rows, made "
                    f"by the tokenizer of its own LM ({own_lm / 'model'}): give data.dataset= "
                    "rows made by the model's tokenizer, or a text dataset (data.column=<its "
                    "text column>)")
            continue
        rows = rows_record(data)
        if rows is None:
            notes.append(f"data.dataset={data.dataset} records no tokenizer: nothing checks "
                         f"that its ids are {model}'s")
            continue
        tok = model_tokenizer_record(model)
        if tok is None:
            notes.append(f"the tokenizer of {model} is not here: each cell compares it with "
                         f"the rows' ({rows['name']}) when it starts")
        check_same_tokenizer(rows, tok, model, data.dataset)
    return notes
