"""Tokens/s and peak memory of one training step per setting (local, e2e, e2e_ds).

    python benchmarks/bench_settings.py [--n_layers 4 --d_model 128 --vocab 4096 --ctx 128
                                         --batch 8 --ratio 8 --layer 2 --steps 10 --device cpu]

A random GPT-2-shaped model of the given shape is built in-process (no downloads). Each setting
runs in its own process, so peak memory is that setting's: the CUDA allocator's peak on GPU, the
process's peak RSS on CPU (model and libraries included).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from e2e.config import CellConfig, LossConfig, ModelConfig  # noqa: E402
from e2e.losses import loss_coeffs  # noqa: E402
from e2e.model import load_model  # noqa: E402
from e2e.sae import SAE, n_dict_for  # noqa: E402
from e2e.train import micro_step_loss  # noqa: E402


def build_model(args, tmp: Path):
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=args.vocab, n_positions=max(args.ctx, 64),
                               n_embd=args.d_model, n_layer=args.n_layers,
                               n_head=max(1, args.d_model // 64))).save_pretrained(tmp)
    tok = Tokenizer(models.WordLevel({"<|endoftext|>": 0}, unk_token="<|endoftext|>"))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(tmp)
    return load_model(ModelConfig(str(tmp)), args.device)


def peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(model, args, setting: str) -> tuple[float, float]:
    d = model.cfg.d_model
    sae = SAE(d, n_dict_for(d, args.ratio)).to(args.device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    cfg = CellConfig(layer=args.layer, loss=LossConfig(setting=setting, sparsity_coeff=1.0))
    coeffs = loss_coeffs(cfg.loss, args.layer, model.cfg.n_layers)
    tokens = torch.randint(0, args.vocab, (args.batch, args.ctx), device=args.device)

    def step():  # the trainer's own micro-step: the same passes, the same loss
        loss, _, _ = micro_step_loss(model, sae, cfg, coeffs, tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up
        step()
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if args.device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return args.steps * args.batch * args.ctx / dt, peak_mb(args.device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("n_layers", 4), ("d_model", 128), ("vocab", 4096), ("ctx", 128),
                          ("batch", 8), ("layer", 2), ("steps", 10)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--ratio", type=float, default=8.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", choices=("local", "e2e", "e2e_ds"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        with tempfile.TemporaryDirectory() as tmp:
            tps, mem = bench(build_model(args, Path(tmp)), args, args.only)
        print(f"{tps} {mem}")
        return
    print(f"model: {args.n_layers} layers, d_model {args.d_model}, vocab {args.vocab}; SAE at "
          f"layer {args.layer}, ratio {args.ratio:g}; batch {args.batch} x ctx {args.ctx}; "
          f"{args.steps} steps on {args.device} ({torch.get_num_threads()} threads)")
    local_tps = None
    for setting in ("local", "e2e", "e2e_ds"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", setting],
                             capture_output=True, text=True, check=True).stdout
        tps, mem = map(float, out.split()[-2:])
        local_tps = local_tps or tps
        rel = f"   {local_tps / tps:.2f}x local's time per token" if setting != "local" else ""
        print(f"{setting:7} {tps:10.0f} tokens/s   peak memory {mem:8.1f} MiB{rel}", flush=True)


if __name__ == "__main__":
    main()
