"""A small GPT-2-style language model built offline: corpus -> byte-level BPE -> pre-training.

`pretrain(cfg, out_dir)` is a job like any other: it writes `model/` (Hugging Face layout with its
tokenizer, which `TransformerBridge.boot_transformers` loads offline), `data/` (the corpus
tokenized, EOS after every document), `pretrain.json` (validation loss, time) and `DONE` last.
A second call with the same config returns at once. `train_steps=0` gives a random model (the
smoke grid).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from e2e.config import ConfigError, DataConfig
from e2e.io import atomic_write_text
from e2e.kernels.chip import autocast_for, train_dtype
from e2e.optim import warmup_cosine

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class PretrainConfig:
    corpus_max_chars: int | None = None  # None: the whole corpus (~9M chars)
    vocab_size: int = 4096  # small: with GPT-2's 50257 the unembedding dominates on CPU
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_ctx: int = 256
    train_steps: int = 1200
    batch_size: int = 16
    lr: float = 2e-3  # 3e-3 spiked the loss mid-run
    seed: int = 0
    # bfloat16: autocast of the forward (fp32 weights and optimizer), for CPUs with AMX bf16;
    # auto: bfloat16 where the CPU has it natively, else float32 (`e2e.kernels.chip`), recorded in
    # the folder's info. Its folder name ignores it at float32, so grids made before it keep
    # theirs.
    dtype: Literal["auto", "float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        checks = {"vocab_size": self.vocab_size >= 260, "n_layers": self.n_layers >= 1,
                  "d_model": self.d_model % self.n_heads == 0, "n_ctx": self.n_ctx >= 8,
                  "train_steps": self.train_steps >= 0, "batch_size": self.batch_size >= 1}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"pretrain.{name}={getattr(self, name)!r} is invalid")

    def tokens(self) -> tuple[int, tuple[int, ...]]:
        """(vocabulary size at most, special ids): the plan's check of `data.exclude_tokens`
        before the model is trained. EOS is the tokenizer's one special token, id 0 (the BPE
        trainer puts special tokens first); a smaller corpus may give fewer ids."""
        return self.vocab_size, (0,)

    def key(self) -> dict:
        """What the pre-trained model depends on, for its folder's hash (fields added later are
        left out at their defaults)."""
        d = asdict(self)
        if d["dtype"] == "float32":
            d.pop("dtype")
        return d


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE with one special token, EOS; it adds no BOS."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=[EOS],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS,
                                   bos_token=EOS, unk_token=EOS, pad_token=EOS)


def init_model(cfg: PretrainConfig, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    eos = tokenizer.eos_token_id
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.n_ctx, n_embd=cfg.d_model,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, bos_token_id=eos, eos_token_id=eos,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def tokenize_corpus(corpus, tokenizer):
    """Adds `input_ids` (each document's tokens then EOS) and drops the text."""
    eos = tokenizer.eos_token_id

    def enc(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids]}

    return corpus.map(enc, batched=True, remove_columns=["text"])


@torch.no_grad()
def eval_loss(model, batches: list[torch.Tensor]) -> float:
    model.eval()
    losses = [float(model(b, labels=b).loss) for b in batches]
    model.train()
    return sum(losses) / len(losses)


def pretrain(cfg: PretrainConfig, out_dir: Path | str, progress: bool = True) -> dict:
    """Builds corpus, tokenizer and model and trains it; cached by `DONE` in out_dir."""
    import datasets
    from tqdm import tqdm

    from e2e.data.tokenizer_id import tokenizer_record, write_record
    from e2e.data.tokens import TokenStream
    from e2e.lm.corpus import build_corpus

    out = Path(out_dir)
    done, summary_path = out / "DONE", out / "pretrain.json"
    if done.exists():
        return json.loads(summary_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    corpus = datasets.load_from_disk(str(build_corpus(out / "corpus", cfg.corpus_max_chars)))
    tokenizer = train_tokenizer(corpus["train"]["text"], cfg.vocab_size)
    from e2e.model.positions import special_ids

    if special_ids(tokenizer) != cfg.tokens()[1]:  # what the plan checked the ids against
        raise RuntimeError(f"the tokenizer's special ids are {special_ids(tokenizer)}, not "
                           f"{cfg.tokens()[1]}")
    tokenize_corpus(corpus, tokenizer).save_to_disk(str(out / "data"))
    write_record(out / "data", tokenizer_record(tokenizer, str(out / "model")))
    model = init_model(cfg, tokenizer)

    data_cfg = DataConfig(dataset=str(out / "data"), column="input_ids",
                          context_length=cfg.n_ctx, eval_split="validation")
    train_stream = TokenStream(data_cfg, tokenizer, cfg.seed, "train")
    val_stream = TokenStream(data_cfg, tokenizer, cfg.seed, "validation")
    val_batches = [val_stream.next_batch(cfg.batch_size) for _ in range(8)]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.1,
                            betas=(0.9, 0.95))
    warmup = max(1, cfg.train_steps // 20)
    # linear warmup over 5% of the steps, cosine to 10%
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, warmup, cfg.train_steps, 0.1))
    val_before = eval_loss(model, val_batches)
    bar = tqdm(range(cfg.train_steps), desc="pretrain", disable=not progress, mininterval=5)
    # the small LM trains on the CPU
    dtype = train_dtype(cfg.dtype, torch.device("cpu"))
    autocast = autocast_for(dtype, torch.device("cpu"))
    for _ in bar:
        batch = train_stream.next_batch(cfg.batch_size)
        with autocast:
            loss = model(batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    val_after = eval_loss(model, val_batches)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    summary = {"config": cfg.key(), "val_loss_init": val_before, "val_loss": val_after,
               "train_tokens": cfg.train_steps * cfg.batch_size * cfg.n_ctx,
               "train_time_s": time.time() - t0, "train_dtype": dtype}
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    atomic_write_text(done, "ok\n")
    return summary
