"""Time and peak memory of the geometry at the paper's size: within-SAE max cosines of a
768 x 46,080 dictionary (random unit columns), and one cross-dictionary pass.

    python benchmarks/bench_geometry.py [n=46080] [d=768]
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch

from e2e.analysis import geometry
from jobs import cli


@dataclass(frozen=True)
class Options:
    n: int = 46_080  # dictionary elements
    d: int = 768  # their dimension


def main(*tokens: str) -> None:
    args = cli.parse_options(tokens, Options)
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(args.d, args.n, generator=g), dim=0)
    b = torch.nn.functional.normalize(torch.randn(args.d, args.n, generator=g), dim=0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    within = geometry.max_cosines(a)
    t_within = time.perf_counter() - t
    t = time.perf_counter()
    geometry.max_cosines(a, b)
    t_cross = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gflop = 2 * args.d * args.n * args.n / 1e9
    print(f"{args.d} x {args.n}, {torch.get_num_threads()} threads: within {t_within:.1f} s "
          f"({gflop / t_within:.0f} GFLOP/s), cross {t_cross:.1f} s; peak RSS {rss:.0f} MiB "
          f"({rss0:.0f} MiB with both dictionaries loaded; a full {args.n}² float matrix "
          f"would be {4 * args.n ** 2 / 2 ** 20:.0f} MiB); mean within max cos "
          f"{float(within.mean()):.3f}")


if __name__ == "__main__":
    cli.run(main)
