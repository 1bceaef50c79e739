"""Time and peak memory of the e2e step's KL with its unembedding: the fused form the trainer
uses (`e2e.losses.kl_orig_sae` with a `CleanTarget`: chunks of tokens, gradient in the forward,
compiled softmax core) against the plain one it replaced (logits materialised on both sides,
clean softmax kept, autograd's backward through the unembedding).

    python benchmarks/bench_kl.py [--tokens 256 --d_model 768 --vocab 50257 --dtype auto
                                   --reps 5 --device cpu]

Each variant runs in its own process; memory is the peak above the inputs (the CUDA
allocator's on GPU, the process's RSS on CPU). The two values and gradients are compared.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import torch

from e2e.kernels import CleanTarget
from e2e.kernels.chip import autocast_for, train_dtype
from e2e.losses import kl_orig_sae


def _peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plain(x_sae, x_clean, w):
    """The step before: both sides' logits materialised, autograd through the unembedding."""
    with torch.no_grad():
        logits_clean = x_clean @ w.T
    return kl_orig_sae(logits_clean, x_sae @ w.T)


def run_one(args, variant: str) -> None:
    torch.manual_seed(0)
    dev = args.device
    w = torch.randn(args.vocab, args.d_model, device=dev) / args.d_model**0.5
    x_clean = torch.randn(args.tokens, args.d_model, device=dev)
    x_sae = (x_clean + 0.3 * torch.randn_like(x_clean)).requires_grad_()
    autocast = autocast_for(args.dtype, torch.device(dev))

    def step():
        with autocast:
            kl = (kl_orig_sae(CleanTarget(x_clean, w, None), x_sae) if variant == "fused"
                  else _plain(x_sae, x_clean, w))
        (grad,) = torch.autograd.grad(kl, x_sae)
        return kl, grad

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = _peak_mib(dev)  # the inputs (and, on CPU, the process before any step)
    kl, grad = step()  # warm-up (and compilation)
    t0 = time.perf_counter()
    for _ in range(args.reps):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.reps
    extra = _peak_mib(dev) - base
    torch.save({"kl": kl.detach().cpu(), "grad": grad.cpu()}, f"{args.tmp}/{variant}.pt")
    print(f"{dt * 1e3} {extra}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("tokens", 256), ("d_model", 768), ("vocab", 50257), ("reps", 5)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto: bf16 where the chip has it natively, as a cell (e2e.kernels.chip)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dtype == "auto":
        args.dtype = train_dtype("auto", torch.device(args.device))
    if args.only:
        run_one(args, args.only)
        return
    import tempfile

    print(f"KL with unembedding: {args.tokens} tokens, d_model {args.d_model}, vocab "
          f"{args.vocab}, {args.dtype} on {args.device} ({torch.get_num_threads()} threads)")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("plain", "fused"):
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", variant,
                                  "--tmp", tmp], capture_output=True, text=True, check=True)
            ms, mib = map(float, out.stdout.split()[-2:])
            print(f"{variant:6} {ms:9.1f} ms a forward and backward   peak {mib:8.1f} MiB "
                  "above the inputs", flush=True)
        a, b = torch.load(f"{tmp}/plain.pt"), torch.load(f"{tmp}/fused.pt")
        print(f"fused - plain: KL {float(b['kl'] - a['kl']):.2e} (KL {float(a['kl']):.4f}); "
              f"gradient relative difference "
              f"{float((b['grad'] - a['grad']).norm() / a['grad'].norm()):.2e}")


if __name__ == "__main__":
    main()
