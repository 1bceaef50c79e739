"""The language models a grid builds on its shared root: the small LM pre-trained here
(`pretrain`) and a real pretrained LM from a registry package's GGUF (`gguf`)."""

from __future__ import annotations

from pathlib import Path


def build_lm(cfg, out_dir: Path | str, progress: bool = True) -> dict:
    """Builds the grid's model and tokenized corpus in `out_dir` (a `PretrainConfig` or a
    `GGUFLMConfig`); returns its summary (`pretrain.json`). Cached by `DONE`. Two builds of
    one folder at once (two submissions into one root) do not both write it: the second waits
    on the folder's lock (flock: released when its holder dies) and then reads the first's."""
    import fcntl

    from e2e.lm.gguf import GGUFLMConfig, build_gguf_lm
    from e2e.lm.pretrain import pretrain

    build = build_gguf_lm if isinstance(cfg, GGUFLMConfig) else pretrain
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build(cfg, out_dir, progress)
