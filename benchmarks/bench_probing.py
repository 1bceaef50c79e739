"""Seconds for the evaluation step's probe fits with BLAS on one thread (what the step does,
`e2e.evals.probing.one_blas_thread`) and on BLAS's default threads, side by side, and whether
the two give the same numbers.

    python benchmarks/bench_probing.py [--acts <root>/_evals_cache/<hash>.pt --dataset TAG]

- sparse probing on one dataset of sae-probes' wheel (`--dataset`, its labels and "normal"
  split): the dense baseline (sae-probes' L2 logreg on every dimension, 11 fits) and the
  k-sparse probes on the raw dimensions (k = 1, 2, 5; L1). The features are the residuals the
  evaluation step cached (`--acts`, rows in the dataset's order), or else Gaussian rows of
  SmolLM2's width (576) with unequal scales and the class shifted along one direction.
- absorption's k-sparse probes (`e2e.evals.absorption.k_sparse_probes`: 26 letters, k = 1 to
  10) on random non-negative codes of 6,400 words and 2,304 latents (SmolLM2's 4× dictionary).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from e2e.evals import absorption, probing


def _features(args, y: np.ndarray) -> torch.Tensor:
    if args.acts:
        return torch.load(args.acts)[:len(y)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(y), 576, generator=g) * torch.rand(576, generator=g) * 3
    shift = torch.randn(576, generator=g) * 0.1
    return x + torch.as_tensor(y, dtype=torch.float32)[:, None] * shift


def _probing(x, y, train, test):
    dense = probing.find_best_reg(x[train].numpy(), y[train], x[test].numpy(), y[test], "l2")
    sparse = probing.sparse_probe(x[train], y[train], x[test], y[test])
    return (dense.test_acc, dense.test_auc, *(m.test_acc for m in sparse.values()))


def _absorption():
    g = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(6400, 2304, generator=g) - 2.0)
    labels = torch.randint(0, 26, (6400,), generator=g)
    probes = absorption.k_sparse_probes(codes, labels, seed=42)
    return tuple(float(p.bias) for p in probes[10].values())[:3]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="129_arith_mc_A")
    p.add_argument("--acts", default="")
    args = p.parse_args()
    _, y, size = probing.read_dataset(args.dataset)
    y = y[:5000]
    x = _features(args, y)
    train, test = probing.normal_split(y, size, 42)
    one = probing.one_blas_thread
    print(f"{args.dataset}: {len(train)} training rows, {len(test)} test rows, "
          f"{x.shape[1]} dimensions ({'cached residuals' if args.acts else 'Gaussian'}); "
          f"torch threads {torch.get_num_threads()}")
    for what, fn in (("sparse probing (dense + top-k raw)", lambda: _probing(x, y, train, test)),
                     ("absorption's k-sparse probes", _absorption)):
        out = {}
        for label, ctx in (("BLAS default threads", contextlib.nullcontext), ("one thread", one)):
            # the step's own limit is swapped for each run's, so only the threads differ
            probing.one_blas_thread = absorption.one_blas_thread = ctx
            t = time.perf_counter()
            out[label] = fn()
            out[label + " s"] = time.perf_counter() - t
        ratio = out["BLAS default threads s"] / out["one thread s"]
        same = np.allclose(out["BLAS default threads"], out["one thread"], atol=1e-6)
        print(f"{what}: default {out['BLAS default threads s']:.1f} s, one thread "
              f"{out['one thread s']:.1f} s ({ratio:.1f}x); same numbers: {same}")
    probing.one_blas_thread = absorption.one_blas_thread = one


if __name__ == "__main__":
    main()
