"""The language models a grid builds on its shared root: the small LM pre-trained here
(`pretrain`) and a real pretrained LM from a registry package's GGUF (`gguf`)."""

from __future__ import annotations

from pathlib import Path


def build_lm(cfg, out_dir: Path | str, progress: bool = True) -> dict:
    """Builds the grid's model and tokenized corpus in `out_dir` (a `PretrainConfig` or a
    `GGUFLMConfig`); returns its summary (`pretrain.json`). Cached by `DONE`."""
    from e2e.lm.gguf import GGUFLMConfig, build_gguf_lm
    from e2e.lm.pretrain import pretrain

    build = build_gguf_lm if isinstance(cfg, GGUFLMConfig) else pretrain
    return build(cfg, out_dir, progress)
