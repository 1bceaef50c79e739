"""Peak memory of the feature browser's scan (`e2e.analysis.features.scan`) per chunk, against
one (CHUNK_TOKENS, n) float tensor: `python benchmarks/bench_scan_memory.py [n ...]`.

Each n runs in its own process: peak RSS after the activations and the encoder exist, then
after `scan` of 2 chunks; the difference over one chunk's codes (CHUNK_TOKENS x n x 4 bytes) is
the multiple `jobs.plan.analysis_cost.SCAN_CHUNKS` models."""

from __future__ import annotations

import resource
import subprocess
import sys


def one(n: int) -> None:
    import torch

    from e2e.analysis import features

    torch.manual_seed(0)
    t, d = features.CHUNK_TOKENS, 64
    acts = torch.randn(2 * t // 128, 128, d)
    w = torch.randn(d, n) / d ** 0.5

    def encode(a):
        return torch.relu(a @ w - 1.6)  # about 5% of codes fire

    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731
    before = rss()
    features.scan(encode, acts, n)
    chunk = t * n * 4 / 2**20
    print(f"n {n:>6}: scan peak +{rss() - before:,.0f} MiB = {(rss() - before) / chunk:.1f} x "
          f"one ({t} x n) float chunk ({chunk:,.0f} MiB)", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        one(int(sys.argv[2]))
    else:
        for n in map(int, sys.argv[1:] or ["8192", "16384"]):
            subprocess.run([sys.executable, __file__, "--one", str(n)], check=True)
