"""`fit(cfgs, out_dirs)`: one ksvd cell (a pack of one), fitted (or resumed) and scored like
every other cell.

1. Activations: `ksvd.n_tokens` rows of the hook's activations, from the cell's training stream
   (the same data pipeline and seed as the SAE cells; every position of a sequence, position 0
   included, as the SAEs see them), cached once as `activations.npy` (float32, written to a
   temporary file and renamed when complete; read memory-mapped). A cell killed while caching
   caches again.
2. Fit: the decoder bias b is the activations' mean; D starts random (or from data). Each
   sample batch of a pass (a seeded permutation of the cache) gets one warm-started K-SVD
   iteration: sparse coding of y - b, then the dictionary update. After every batch D is
   checkpointed (`checkpoint.pt`), so a killed cell resumes at the next batch and ends bit for
   bit as if it had not been killed: the permutation and the update's randomness derive from
   (seed, pass, batch) alone.
3. Score: after each pass, the evaluation every cell gets (`e2e.data.source`, with the
   matching-pursuit encoder), then the alive pass; metrics.h5, sae/ (SAELens's layout,
   architecture "ksvd"), DONE last; the cache is deleted unless `ksvd.keep_activations`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from e2e import ksvd
from e2e.config import CellConfig, n_dict_for
from e2e.data.source import (
    Source,
    alive_masks,
    eval_batches,
    evaluate_dictionaries,
    open_source,
)
from e2e.io import atomic_path, atomic_write_text, cell_paths, load_checkpoint
from e2e.kernels.chip import autocast_for, train_dtype
from e2e.metrics import AliveTracker
from e2e.model import resolve_device
from e2e.rng import generator
from e2e.saelens import cell_meta, save_saelens
from e2e.store import append_row, wandb_run, write_metrics

CACHE_FILE = "activations.npy"


def fit(cfgs: list[CellConfig], out_dirs: list, should_stop: Callable[[], bool] | None = None,
        progress: bool = True) -> list[str]:
    """Fits (or resumes) the cell; ["done"], or ["interrupted"] after checkpointing if
    `should_stop()` fired (polled between sample batches). A ksvd cell is always alone."""
    (cfg,), (out_dir,) = cfgs, out_dirs
    paths = cell_paths(out_dir)
    device = resolve_device(cfg.device)
    source = open_source([cfg], device, paths.root.parent)
    autocast = autocast_for(train_dtype(cfg.dtype, device), device)
    k, kc = n_dict_for(source.d_in, cfg.sae.dict_size_to_input_ratio), cfg.ksvd
    cache = paths.root / CACHE_FILE
    t0 = time.perf_counter()
    if not cache.exists():  # (a killed caching's temporary file: gone with the cell lock)
        _cache_activations(cfg, source, cache, device, autocast, progress)
    cache_time = time.perf_counter() - t0
    acts = np.load(cache, mmap_mode="r")
    n_batches = math.ceil(kc.n_tokens / kc.batch_size)
    total = n_batches * kc.n_passes
    state = _load_or_init(cfg, paths.checkpoint, acts, k, device, cache_time)
    alive = AliveTracker(k, cfg.eval.alive_window_tokens, device)
    if "alive" in state:
        alive.load_state_dict(state["alive"])
    evals = eval_batches(source, cfg, device)
    run = wandb_run(cfg, paths.root)
    bar = tqdm(total=total, initial=state["batch"], disable=not progress, mininterval=2,
               desc=paths.root.name, dynamic_ncols=True)

    def model_of(d: torch.Tensor) -> ksvd.KSVDDictionary:
        return ksvd.KSVDDictionary(d, state["mean"], kc.max_nnz, kc.rtol, kc.coder, kc.refit)

    while state["batch"] < total:
        if should_stop is not None and should_stop():
            _save(paths, cfg, state, alive, total)
            bar.close()
            return ["interrupted"]
        t1 = time.perf_counter()
        b = state["batch"]
        y = _batch(acts, cfg, b, n_batches, device) - state["mean"]
        g = generator(cfg.seed, b)
        codes = ksvd.sparse_code(y, state["D"], kc.max_nnz, kc.rtol, kc.coder, kc.refit)
        state["D"], codes = ksvd.update_dictionary(y, state["D"], codes, kc.atom_chunk, g,
                                                   kc.power_iters)
        alive.mark(codes.atom, y.shape[0])
        values = _batch_stats(y, state["D"], codes, k)
        state["batch"] = b + 1
        state["train_time_s"] += time.perf_counter() - t1
        values["tokens_seen"] = float(state["batch"] * kc.batch_size)
        append_row(state["train_log"], b, values)
        if run is not None:
            run.log(values, step=b)
        if state["batch"] % n_batches == 0:  # end of a pass: the full evaluation
            metrics = evaluate_dictionaries(source, [model_of(state["D"])], cfg.layer,
                                            evals)[0]
            append_row(state["eval_log"], state["batch"], {**metrics,
                                                        "alive_dict_elements": alive.alive})
        _save(paths, cfg, state, alive, total)
        bar.set_postfix(ev=f"{values['explained_variance']:.3f}", l0=f"{values['l0']:.1f}")
        bar.update(1)
    bar.close()
    final = {k: v[-1] for k, v in state["eval_log"].items() if k != "step"}
    model = model_of(state["D"])
    mask = alive_masks(source, [model], cfg, device)[0]
    _save(paths, cfg, state, alive, total, final, mask)
    save_saelens(model, paths.sae, cell_meta(cfg, cfg.seed, source.positions.exclude))
    if run is not None:
        run.summary.update(final)
        run.finish()
    atomic_write_text(paths.done, f"batch {state['batch']}\n")
    if not kc.keep_activations:
        cache.unlink(missing_ok=True)
    return ["done"]


@torch.no_grad()
def _cache_activations(cfg: CellConfig, source: Source, cache: Path, device: torch.device,
                       autocast, progress: bool = False) -> None:
    """The first `ksvd.n_tokens` activations of the training stream, row by row (a bar of its
    own: at the paper's size this pass through the model takes minutes before the fit)."""
    n, d = cfg.ksvd.n_tokens, source.d_in
    per_batch = cfg.eval.batch_size  # sequences per forward pass
    bar = tqdm(total=n, disable=not progress, mininterval=2, desc="caching activations",
               unit="tok")
    with atomic_path(cache) as tmp, bar:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
        filled = 0
        while filled < n:
            batch = source.stream.next_batch(per_batch).to(device)
            with autocast:
                x = source.activations(batch, cfg.layer)
            rows = x.reshape(-1, d).float().cpu().numpy()
            take = min(len(rows), n - filled)
            arr[filled:filled + take] = rows[:take]
            filled += take
            bar.update(take)
        arr.flush()
        del arr


def _batch(acts: np.ndarray, cfg: CellConfig, b: int, n_batches: int,
           device: torch.device) -> torch.Tensor:
    """Sample batch b: pass b // n_batches visits the cache in a permutation seeded by
    (seed, pass); rows are read in ascending order (memory-mapped reads stay sequential)."""
    p, i = divmod(b, n_batches)
    g = generator(cfg.seed, 7919 * (p + 1))
    order = torch.randperm(len(acts), generator=g)
    size = cfg.ksvd.batch_size
    idx = order[i * size:(i + 1) * size].sort().values.numpy()
    return torch.from_numpy(np.ascontiguousarray(acts[idx])).to(device)


def _load_or_init(cfg: CellConfig, checkpoint: Path, acts: np.ndarray, k: int,
                  device: torch.device, cache_time: float) -> dict:
    if checkpoint.exists():
        s = load_checkpoint(checkpoint, device)
        s["cache_time_s"] += cache_time
        return s
    mean = torch.zeros(acts.shape[1], dtype=torch.float64)
    for start in range(0, len(acts), 1 << 16):
        mean += torch.from_numpy(np.array(acts[start:start + (1 << 16)], np.float64)).sum(0)
    mean = (mean / len(acts)).float()
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.ksvd.init == "data":
        pick = torch.randperm(len(acts), generator=g)[:k].sort().values.numpy()
        rows = torch.from_numpy(np.ascontiguousarray(acts[pick])) - mean
        d = torch.nn.functional.normalize(rows.T, dim=0)
        if d.shape[1] < k:  # fewer activations than atoms: the rest random
            d = torch.cat([d, ksvd.random_dictionary(d.shape[0], k - d.shape[1], g)], 1)
    else:
        d = ksvd.random_dictionary(acts.shape[1], k, g)
    return {"D": d.to(device), "mean": mean.to(device), "batch": 0, "train_log": {},
            "eval_log": {}, "train_time_s": 0.0, "cache_time_s": cache_time}


@torch.no_grad()
def _batch_stats(y: torch.Tensor, d: torch.Tensor, codes: ksvd.Codes, k: int) -> dict:
    """KSVD.jl's logged values on the batch just fitted: explained variance
    1 - Σ var(E) / Σ var(Y), mean ||r|| / ||y||, unused atoms, minimum usage; and L0."""
    r = ksvd.residual(y, d, codes)
    usage = torch.bincount(codes.atom, minlength=k)
    ev = 1 - r.var(0).sum() / y.var(0).sum()
    rel = (torch.linalg.vector_norm(r, dim=1)
           / torch.linalg.vector_norm(y, dim=1).clamp_min(1e-12)).mean()
    return {"explained_variance": float(ev), "relative_residual": float(rel),
            "unused_atoms": float((usage == 0).sum()), "min_usage": float(usage.min()),
            "l0": codes.atom.numel() / y.shape[0]}


def _save(paths, cfg: CellConfig, state: dict, alive: AliveTracker, total: int,
          final: dict | None = None, mask: torch.Tensor | None = None) -> None:
    """Checkpoint, then metrics.h5 (the final eval and alive mask once there are)."""
    state["alive"] = alive.state_dict()
    with atomic_path(paths.checkpoint, keep_previous=True) as tmp:
        torch.save({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in state.items()}, tmp)
    write_metrics(paths.metrics, config_json=cfg.to_json(), train=state["train_log"],
                  eval_history=state["eval_log"], final_eval=final,
                  arrays={} if mask is None else {"alive_mask": mask[None].cpu().numpy()},
                  attrs={"train_time_s": state["train_time_s"] + state["cache_time_s"],
                         "cache_time_s": state["cache_time_s"], "step": state["batch"],
                         "n_steps": total, "samples_seen": state["batch"]})
