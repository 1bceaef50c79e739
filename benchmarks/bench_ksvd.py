"""DB-KSVD against scikit-learn's MiniBatchDictionaryLearning on the same activations.

    python benchmarks/bench_ksvd.py [root=runs] [n=1048576] [k=1024] [max_nnz=16]
                                    [sklearn_seconds=600] [passes=1]

The activations: `n` rows of tiny's layer-2 resid_pre (d 128), cached by a real ksvd cell
(`<root>/tiny` must hold tiny's pre-trained LM: run `make demo` once). Ours is that cell's fit
(batches of 65,536, one warm-started K-SVD iteration each, `passes` passes); its fit time is
the cell's loop time without caching or evaluation. scikit-learn's model gets the same centred
rows through `partial_fit` in batches of 256 (its default), in the same order, until one pass
is done or `sklearn_seconds` have gone by; then both dictionaries code 65,536 held-out rows
(tiny's validation split) with at most max_nnz atoms: ours with its matching pursuit,
scikit-learn's with its own OMP transform and with our matching pursuit. Explained variance
is KSVD.jl's, 1 - Σ var(residual) / Σ var(rows).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from e2e import ksvd
from e2e.config import normalized
from e2e.io import cell_paths
from e2e.saelens import load_saelens
from e2e.store import read_metrics
from e2e.train import train
from jobs import cli
from jobs.plan.grid import expand
from jobs.plan.grids import GRIDS, pretrain_dir

HELD_OUT = 65_536


def explained_variance(y: np.ndarray, y_hat: np.ndarray) -> float:
    return float(1 - (y - y_hat).var(0).sum() / y.var(0).sum())


@dataclass(frozen=True)
class Options:
    root: str = "runs"
    n: int = 1_048_576
    k: int = 1024
    max_nnz: int = 16
    sklearn_seconds: float = 600.0
    passes: int = 1


def main(*tokens: str) -> None:
    o = cli.parse_options(tokens, Options)
    root, n, k, max_nnz, passes = Path(o.root).resolve(), o.n, o.k, o.max_nnz, o.passes
    if not (pretrain_dir(root, "tiny") / "DONE").exists():
        sys.exit(f"{pretrain_dir(root, 'tiny')} has no pre-trained LM: run `make demo` (or "
                 "`python jobs/submit.py grid=tiny`) first, or pass root=")
    base = next(c for c in expand(GRIDS["tiny"], root) if c.loss.setting == "ksvd")
    cfg = normalized(replace(base, sae=replace(base.sae, dict_size_to_input_ratio=k / 128),
                             ksvd=replace(base.ksvd, max_nnz=max_nnz, n_tokens=n,
                                          n_passes=passes, keep_activations=True)))
    out = root / "_bench_ksvd" / f"n{n}-k{k}-nnz{max_nnz}-p{passes}"
    print(f"{torch.get_num_threads()} torch threads; ours: DB-KSVD cell {out}", flush=True)
    train(cfg, out, progress=True)
    attrs = read_metrics(cell_paths(out).metrics)["attrs"]
    ours_s = float(attrs["train_time_s"] - attrs["cache_time_s"])
    if not (out / "activations.npy").exists():
        sys.exit(f"{out} is done but its activations.npy is gone: delete {out} to rerun")
    acts = np.load(out / "activations.npy", mmap_mode="r")
    model, _ = load_saelens(cell_paths(out).sae)
    held = _held_out(cfg)
    mean = model.b_dec.numpy()
    y_test = held - mean
    codes = ksvd.sparse_code(torch.from_numpy(y_test), model.D, max_nnz)
    ev_ours = explained_variance(y_test, codes.reconstruct(model.D).numpy())
    print(f"ours: fit {ours_s:.1f} s for {n:,} rows x {passes} pass(es) "
          f"({n * passes / ours_s:,.0f} rows/s); held-out explained variance {ev_ours:.4f}",
          flush=True)

    from sklearn.decomposition import MiniBatchDictionaryLearning

    sk = MiniBatchDictionaryLearning(n_components=k, batch_size=256,
                                     transform_algorithm="omp",
                                     transform_n_nonzero_coefs=max_nnz, random_state=0)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()
    budget, t0, seen = o.sklearn_seconds, time.perf_counter(), 0
    while seen < n and time.perf_counter() - t0 < budget:
        idx = np.sort(order[seen:seen + 65_536])
        block = np.asarray(acts[idx], dtype=np.float32) - mean
        for i in range(0, len(block), 256):
            sk.partial_fit(block[i:i + 256])
            if time.perf_counter() - t0 >= budget:
                seen += i + 256
                break
        else:
            seen += len(block)
    sk_s = time.perf_counter() - t0
    seen = min(seen, n)
    sk_codes = sk.transform(y_test)
    ev_sk = explained_variance(y_test, sk_codes @ sk.components_)
    d_sk = torch.nn.functional.normalize(torch.from_numpy(sk.components_.T.copy()).float(),
                                         dim=0)
    mp = ksvd.sparse_code(torch.from_numpy(y_test), d_sk, max_nnz)
    ev_sk_mp = explained_variance(y_test, mp.reconstruct(d_sk).numpy())
    rate = seen / sk_s
    print(f"scikit-learn {__import__('sklearn').__version__}: {seen:,} rows in {sk_s:.1f} s "
          f"({rate:,.0f} rows/s{'' if seen >= n else '; stopped at the time budget'}); "
          f"held-out explained variance {ev_sk:.4f} (its OMP), {ev_sk_mp:.4f} (our pursuit)")
    print(f"throughput ratio (rows per second, ours / scikit-learn): "
          f"{n * passes / ours_s / rate:.1f}x")


@torch.no_grad()
def _held_out(cfg) -> np.ndarray:
    """HELD_OUT rows of the same hook from the eval stream (tiny's validation split)."""
    from e2e.data.source import open_source

    source = open_source([cfg], torch.device("cpu"), Path("/nonexistent"))
    evs, rows = source.make_eval_stream(), []
    while sum(len(r) for r in rows) < HELD_OUT:
        x = source.activations(evs.next_batch(cfg.eval.batch_size), cfg.layer)
        rows.append(x.reshape(-1, x.shape[-1]).numpy())
    return np.concatenate(rows)[:HELD_OUT]


if __name__ == "__main__":
    cli.run(main)
