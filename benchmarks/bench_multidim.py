"""Seconds for the multi-dimensional step's indices (PCA, mixture and separability indices of
every cluster of a dictionary), alone and while other processes load every core.

    python benchmarks/bench_multidim.py [--clusters 60 --max_points 5000 --d 16 --steps 500
                                         --contend 0 --threads 0 --per_set]

Clusters are random point clouds in d dimensions (sizes log-uniform in [20, max_points], as a
dictionary's clusters fire on a few to many tokens); `--per_set` fits one cluster at a time
(`cluster_indices`, the only path before the batch), the default fits all clusters in one batch
(`clusters_indices`). `--contend n` starts n processes that run torch matmuls on every core for
the whole measurement (a second job on the node). Prints the time and the cost per point-step of
the mixture fit, the constant of the analysis job's time model (`jobs.plan.analysis_cost`).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np
import torch

from e2e.analysis import multidim


def _burn(stop) -> None:
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clusters", type=int, default=60)
    p.add_argument("--max_points", type=int, default=5000)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--contend", type=int, default=0)
    p.add_argument("--per_set", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    sizes = np.exp(rng.uniform(np.log(20), np.log(args.max_points), args.clusters)).astype(int)
    clusters = [rng.normal(size=(n, args.d)) * rng.uniform(0.1, 1, args.d) for n in sizes]
    stop = mp.Event()
    burners = [mp.Process(target=_burn, args=(stop,)) for _ in range(args.contend)]
    for b in burners:
        b.start()
    time.sleep(2 if burners else 0)
    t = time.perf_counter()
    if args.per_set:
        out = [multidim.cluster_indices(c, steps=args.steps) for c in clusters]
    else:
        out = multidim.clusters_indices(clusters, steps=args.steps)
    seconds = time.perf_counter() - t
    stop.set()
    for b in burners:
        b.join()
    point_steps = sum(len(c) * (min(5, args.d) - 1) for c in clusters) * args.steps
    print(f"{'per set' if args.per_set else 'batched'}: {args.clusters} clusters, "
          f"{int(sizes.sum())} points, {args.steps} steps, {args.contend} contending processes, "
          f"{torch.get_num_threads()} torch threads: {seconds:.1f} s, "
          f"{1e9 * seconds / point_steps:.2f} ns per point-step; "
          f"mean M {np.nanmean([o['mixture'] for o in out]):.4f}, "
          f"mean S {np.nanmean([o['separability'] for o in out]):.4f}")


if __name__ == "__main__":
    main()
