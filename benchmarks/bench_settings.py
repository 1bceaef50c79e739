"""Tokens/s and peak memory of one training step per setting (local, e2e, e2e_ds).

    python benchmarks/bench_settings.py [--n_layers 4 --d_model 128 --vocab 4096 --ctx 128
                                         --batch 8 --ratio 8 --layer 2 --steps 10 --device cpu
                                         --pack 1 --dtype auto --compile auto --warmup 2
                                         --settings local,e2e,e2e_ds --exclude 0]

A random GPT-2-shaped model of the given shape is built in-process (no downloads). The step is
the trainer's own (`e2e.train.pack_step`): with `--pack k`, k cells of the setting (different λ)
share one clean pass, and tokens/s is per cell: k x tokens / the median step's time, the
statistic `compare.sh`'s bench of the paper's library reports (the mean step's beside it; on a
GPU each step is synchronised, which a cell is not, so it reads a little low). Each setting runs in
its own process, so peak memory is that setting's: the CUDA allocator's peak on GPU, the
process's peak RSS on CPU (model and libraries included). GFLOP/s counts the step's matmul FLOPs
(torch.utils.flop_counter) against a dense matmul of the step's dtype timed in the same process.
`--dtype auto` is what a cell with the default `dtype=auto` trains in on this machine;
`--compile` is the cell's `model.compile` (auto: on, as for a paper-sized cell; the warm-up
steps compile). `--malloc job` (the default) runs each setting on the allocator a job's process
gets here (tcmalloc where installed: `jobs.plan.containers.allocator_env`), `glibc` on glibc's.
`--exclude p`: a share p of the positions hold a token the cells leave
out (`data.exclude_tokens`); tokens/s still counts every position.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from e2e.config import CellConfig, LossConfig, ModelConfig, SAEConfig
from e2e.kernels.chip import dense_gflops, train_dtype
from e2e.kernels.heap import keep_freed_heap
from e2e.model import Positions, load_model
from e2e.train import pack_step
from e2e.train.member import Member
from jobs.plan.containers import allocator_env, malloc_in_use


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


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench(model, args, setting: str, tmp: Path) -> tuple[float, float, float, float]:
    """Per-cell tokens/s at the median step (the statistic of `compare.sh`'s bench of the
    paper's library), peak MiB, achieved matmul GFLOP/s at the median step, and tokens/s at
    the mean step (every step's time, outliers included), of `args.pack` cells."""
    from contextlib import nullcontext

    from torch.utils.flop_counter import FlopCounterMode

    d, n = model.cfg.d_model, model.cfg.n_layers
    members = [Member(CellConfig(layer=args.layer, dtype=args.dtype, sae=SAEConfig(args.ratio),
                                 model=ModelConfig(compile=args.compile),
                                 loss=LossConfig(setting=setting, sparsity_coeff=1.0 + i)),
                      tmp / f"m{i}", d, n, torch.device(args.device))
               for i in range(args.pack)]
    tokens = [torch.randint(1, args.vocab, (args.batch, args.ctx), device=args.device)]
    positions, share = None, getattr(args, "exclude", 0.0)  # gpu_check's args have none
    if share:  # separators at that share of positions, left out (`data.exclude_tokens`)
        tokens[0][torch.rand(tokens[0].shape, generator=torch.Generator().manual_seed(0)
                             ).to(args.device) < share] = 0
        positions = Positions(exclude=(0,))
    autocast = (torch.autocast(args.device, dtype=torch.bfloat16) if args.dtype == "bfloat16"
                else nullcontext())

    keep_freed_heap()  # as `e2e.train.train_pack` does before a cell's steps

    def step():  # the trainer's own step: the same passes, the same loss, the same optimizer
        pack_step(model, members, tokens, step=1, log=False, autocast=autocast,
                  positions=positions)

    for _ in range(args.warmup):  # warm-up (and the KL's compilation)
        step()
    sync(args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):  # each step timed alone: the median, as the reference reports
        t0 = time.perf_counter()
        step()
        sync(args.device)
        times.append(time.perf_counter() - t0)
    # Counted after the timed steps: once called under the counter's dispatch mode, a compiled
    # function runs eagerly for the rest of the process (the timed steps did, before), until
    # dynamo is reset (gpu_check times every setting in one process).
    with FlopCounterMode(display=False) as counter:
        step()
    torch._dynamo.reset()
    n_tokens = args.pack * args.batch * args.ctx
    median, mean = statistics.median(times), statistics.fmean(times)
    return (n_tokens / median, peak_mb(args.device), counter.get_total_flops() / median / 1e9,
            n_tokens / mean)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("n_layers", 4), ("d_model", 128), ("vocab", 4096), ("ctx", 128),
                          ("batch", 8), ("layer", 2), ("steps", 10)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--ratio", type=float, default=8.0)
    p.add_argument("--pack", type=int, default=1, help="cells sharing one clean pass")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="the cells' model.compile")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--settings", default="local,e2e,e2e_ds", help="comma-separated")
    p.add_argument("--exclude", type=float, default=0.0,
                   help="share of positions holding an excluded token (data.exclude_tokens)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--malloc", choices=("job", "glibc"), default="job",
                   help="a job's allocator (tcmalloc where installed) or glibc's")
    p.add_argument("--only", choices=("local", "e2e", "e2e_ds"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dtype == "auto":
        args.dtype = train_dtype("auto", torch.device(args.device))
    if args.only:
        with tempfile.TemporaryDirectory() as tmp:
            model = build_model(args, Path(tmp) / "model")
            tps, mem, gflops, mean_tps = bench(model, args, args.only, Path(tmp))
        print(f"{tps} {mem} {gflops} {mean_tps} {malloc_in_use()}")
        return
    peak = dense_gflops(torch.device(args.device), getattr(torch, args.dtype))
    print(f"model: {args.n_layers} layers, d_model {args.d_model}, vocab {args.vocab}; SAE at "
          f"layer {args.layer}, ratio {args.ratio:g}; batch {args.batch} x ctx {args.ctx}; "
          f"pack {args.pack}; {args.dtype}; compile {args.compile}; {args.steps} steps on "
          f"{args.device} ({torch.get_num_threads()} threads); dense {args.dtype} matmul "
          f"{peak:.0f} GFLOP/s")
    local_tps = None
    env = shlex.split(allocator_env()) if args.malloc == "job" else []
    for setting in args.settings.split(","):
        out = subprocess.run([*env, sys.executable, __file__, *sys.argv[1:], "--dtype",
                              args.dtype, "--only", setting],
                             capture_output=True, text=True, check=True).stdout
        *numbers, malloc = out.split()[-5:]
        tps, mem, gflops, mean_tps = map(float, numbers)
        local_tps = local_tps or (tps if setting == "local" else None)
        rel = (f"   {local_tps / tps:.2f}x local's time per token"
               if setting != "local" and local_tps else "")
        print(f"{setting:7} {tps:10.0f} tokens/s   (mean step: {mean_tps:.0f} tokens/s)   "
              f"peak memory {mem:8.1f} MiB   matmuls {gflops:6.1f} GFLOP/s "
              f"({100 * gflops / peak:.0f}% of dense), {malloc} malloc{rel}", flush=True)


if __name__ == "__main__":
    main()
