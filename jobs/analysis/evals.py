"""The evaluation step (`evaluate`; its command line is `jobs/evaluate.py`): the field's
evaluations (`e2e.evals`) of every finished dictionary of a grid on a language model, each
written as SAEBench writes it to `results/evals/<eval_type_id>/<cell>_eval_results.json`.

- `core`: SAEBench's core metrics on the cell's own evaluation batches, over the positions it
  was trained on (`e2e.evals.core`).
- `probing`: sae-probes' sparse probing on the options' datasets, with its logreg baseline on
  the raw residual and our k-sparse probe on the raw residual's dimensions beside it
  (`e2e.evals.probing`). The last-token activations of each (model, layer, dataset) are
  computed once and cached under `<root>/_evals_cache/`, shared by every dictionary there.
- `absorption`: SAEBench's feature absorption (`e2e.evals.absorption`); its spelling task
  (prompts' residuals, ground-truth probe) is computed once per (model, layer) and cached the
  same way, after SAEBench's guard: a model that spells too few letters is one line before
  any dictionary is evaluated.

Resumable: a dictionary whose file holds these options is skipped; each file is written
atomically when its evaluation ends, so a killed step loses one dictionary's work at most.
Then the collector runs again (`jobs.report.evals`: summary.csv columns, a tables.md section,
a headline line per layer, `evals_vs_l0.png`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from e2e.config import CellConfig, ConfigError, DataConfig, ModelConfig
from e2e.data.staged import sha256
from e2e.data.tokens import eval_stream
from e2e.evals import absorption, core, probing, spelling
from e2e.evals.saebench import eval_output, write_output
from e2e.io import atomic_path, atomic_write_text, cell_paths
from e2e.model import load_model, positions_for, resolve_device
from e2e.saelens import CFG_FILE, WEIGHTS_FILE, load_saelens
from jobs.analysis.pages import refresh
from jobs.plan.evals import CACHE, Evals, check_datasets
from jobs.report.collect import collect
from jobs.report.evals import ABSORPTION, CORE, FOLDER, PROBING, result_path
from jobs.report.mfr import is_mfr_cell
from jobs.report.results import existing_grid_dir, read_grid

EVAL_TYPE = {"core": CORE, "probing": PROBING, "absorption": ABSORPTION}  # SAEBench's ids


def evaluate(root: Path | str, grid: str, ev: Evals, device: str = "auto") -> Path:
    """Evaluates every finished dictionary not yet evaluated with these options; returns the
    folder of the files."""
    grid_dir = existing_grid_dir(root, grid)
    ev = check_datasets(ev.on(resolve_device(device).type == "cuda"))  # all of them on a GPU
    out = grid_dir / "results"
    every = [c for c in read_grid(grid_dir) if c.cfg.source == "model" and not is_mfr_cell(c.cfg)]
    if not every:
        raise ConfigError(f"evals: grid {grid} has no dictionary on a model (synthetic and MFR "
                          "cells are not evaluated)")
    missing = sorted(set(ev.layers) - {c.cfg.layer for c in every})
    if missing:
        raise ConfigError(f"layers: grid {grid} has no dictionary on a model at layer "
                          f"{missing[0]} (its layers: {sorted({c.cfg.layer for c in every})})")
    cells = [c for c in every if c.status == "done" and (not ev.layers or c.cfg.layer in ev.layers)]
    if not cells:
        raise ConfigError(f"evals: grid {grid} has no finished dictionary on a model"
                          + (f" at layers {list(ev.layers)}" if ev.layers else "") + " yet")
    _run(out, [(c.id, c.cfg, cell_paths(grid_dir / c.id).sae) for c in cells], ev, Path(root),
         device)
    collect(root, grid)  # summary.csv, results.h5, tables.md, the headline, the figure
    refresh(grid_dir / "results")  # the browser's columns
    return out / FOLDER


def evaluate_folder(sae_dir: Path | str, model_name: str, root: Path | str, ev: Evals,
                    device: str = "auto") -> Path:
    """Evaluates one SAELens folder written by any tool (`sae=` on jobs/evaluate.py) on
    `model_name` (a folder or hub id; default: the cfg's `model_name`): probing and absorption
    at the positions its cfg's `seqpos_slice` and `exclude_special_tokens` leave (core needs a
    cell's own evaluation batches). Results in
    `<root>/foreign/evals/<eval_type_id>/<folder name>_eval_results.json`, the cache shared
    with the grids' under `<root>/_evals_cache/`. ConfigError (one line) for a folder that is
    not a SAELens SAE, a hook other than `blocks.<layer>.hook_resid_pre`, or core."""
    sae_dir = Path(sae_dir)
    if not (sae_dir / CFG_FILE).is_file() or not (sae_dir / WEIGHTS_FILE).is_file():
        raise ConfigError(f"sae={sae_dir}: not a SAELens folder (it holds {CFG_FILE} and "
                          f"{WEIGHTS_FILE})")
    if "core" in ev.names:
        raise ConfigError("evals: core scores a grid's cells on their own evaluation batches; "
                          "on a foreign SAE run evals=[probing,absorption]")
    cfg = json.loads((sae_dir / CFG_FILE).read_text())
    hook = cfg.get("hook_name", "")
    layer = re.fullmatch(r"blocks\.(\d+)\.hook_resid_pre", hook)
    if layer is None:
        raise ConfigError(f"sae={sae_dir}: hook {hook!r}: the evaluations read the residual "
                          "stream entering a block, blocks.<layer>.hook_resid_pre")
    name = model_name or cfg.get("model_name") or cfg.get("metadata", {}).get("model_name")
    if not name:
        raise ConfigError(f"sae={sae_dir}: its cfg.json names no model: give model=")
    if ev.layers and int(layer[1]) not in ev.layers:
        raise ConfigError(f"layers={list(ev.layers)}: the SAE reads layer {layer[1]}")
    ev = check_datasets(ev.on(resolve_device(device).type == "cuda"))  # all of them on a GPU
    # the positions it acts on, as SAELens's cfg says them: its slice's start, special ids
    ex = cfg.get("exclude_special_tokens")
    ids = "special" if ex is True else (f"[{','.join(map(str, ex))}]" if ex else "")
    skip = (cfg.get("seqpos_slice") or [0])[0] or 0
    cell = CellConfig(model=ModelConfig(name), layer=int(layer[1]),
                      data=DataConfig(skip_positions=skip, exclude_tokens=ids))
    out = Path(root) / "foreign"
    _run(out, [(sae_dir.name, cell, sae_dir)], ev, Path(root), device)
    return out / FOLDER


def _run(out: Path, dicts: list[tuple[str, CellConfig, Path]], ev: Evals, root: Path,
         device: str) -> None:
    """Every evaluation of `ev` of each (name, cell config, SAELens folder) not yet in `out`
    with these options, the results written under `out` as SAEBench lays them out."""
    sha = {n: sha256(sae / WEIGHTS_FILE) for n, _, sae in dicts}
    configs = {(n, e): {**_config(e, ev), "sae_weights_sha256": sha[n]}
               for n, _, _ in dicts for e in ev.names}  # a retrained cell is evaluated again
    todo = [(n, cfg, sae, e) for n, cfg, sae in dicts for e in ev.names
            if not _done(out, n, e, configs[n, e])]
    print(f"evals: {len(dicts)} dictionaries, {len(todo)} evaluations to run "
          f"({', '.join(ev.names)})", flush=True)
    dev = resolve_device(device)
    models: dict[str, object] = {}

    def model(cfg: CellConfig):
        if cfg.model.name_or_path not in models:
            models.clear()  # one model in memory at a time
            models[cfg.model.name_or_path] = load_model(cfg.model, dev)
        return models[cfg.model.name_or_path]

    tasks = {}  # (model, layer) -> its spelling task, checked before any dictionary
    for cfg in sorted({(cfg.model.name_or_path, cfg.layer): cfg for _, cfg, _, e in todo
                       if e == "absorption"}.values(),
                      key=lambda cfg: (cfg.model.name_or_path, cfg.layer)):
        tasks[cfg.model.name_or_path, cfg.layer] = _spelling(model(cfg), cfg, ev, root)
    run = {"core": _core, "probing": _probing, "absorption": _absorption}
    t0 = time.perf_counter()
    for i, (n, cfg, sae, name) in enumerate(todo):
        d, sae_cfg = load_saelens(sae)
        d = d.to(dev).eval()
        inputs = (tasks[cfg.model.name_or_path, cfg.layer] if name == "absorption"
                  else model(cfg))
        if d.d_in != model(cfg).cfg.d_model:
            raise ConfigError(f"{sae}: the SAE reads {d.d_in} dimensions, the model's "
                              f"residual has {model(cfg).cfg.d_model}")
        metrics, details, extra = run[name](inputs, d, cfg, ev, root, dev)
        path = result_path(out, n, EVAL_TYPE[name])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_output(path, eval_output(EVAL_TYPE[name], configs[n, name], metrics, details,
                                       sae_cfg, extra))
        print(f"evals {i + 1}/{len(todo)} [{time.perf_counter() - t0:.0f} s] {n} {name}",
              file=sys.stderr, flush=True)


def _config(name: str, ev: Evals) -> dict:
    if name == "absorption":  # SAEBench's AbsorptionEvalConfig's fields, and ours
        return {"random_seed": ev.seed, "f1_jump_threshold": absorption.F1_JUMP,
                "max_k_value": absorption.MAX_K, "prompt_template": spelling.TEMPLATE,
                "k_sparse_probe_l1_decay": absorption.L1, "k_sparse_probe_batch_size": 4096,
                "k_sparse_probe_num_epochs": 50, "min_GT_probe_f1": ev.min_probe_f1,
                "min_feats_for_eval": ev.min_letters, "words": ev.words}
    return ({"source": "e2e-sae-hpc: the cell's own evaluation batches and kept positions"}
            if name == "core" else {"setting": "normal", **ev.probing_key()})


def _done(out: Path, cell: str, name: str, config: dict) -> bool:
    path = result_path(out, cell, EVAL_TYPE[name])
    try:
        return json.loads(path.read_text())["eval_config"] == json.loads(json.dumps(config))
    except (OSError, ValueError, KeyError):
        return False


def _core(model, d, cfg: CellConfig, ev: Evals, root: Path, device: torch.device):
    stream = eval_stream(cfg.data, model.tokenizer, cfg.seed)
    batches = [stream.next_batch(cfg.eval.batch_size).to(device)
               for _ in range(cfg.eval.n_batches)]
    positions = positions_for(cfg.data, model.tokenizer, model.cfg.d_vocab)
    metrics, details = core.core_eval(model, d, cfg.layer, batches, positions)
    return metrics, details, None


def _probing(model, d, cfg: CellConfig, ev: Evals, root: Path, device: torch.device):
    """SAEBench's `sparse_probing_sae_probes` record: per k the mean test accuracy, AUC and F1
    over the datasets (`sae`), the logreg baseline's (`llm`), and our k-sparse probe on the
    raw residual's dimensions (`llm_top_k`, not SAEBench's); per dataset in the details."""
    details = []
    for tag in ev.datasets:
        x, y, train, test, path = _activations(model, cfg, tag, ev, root)
        with torch.no_grad():
            codes = torch.cat([d.encode(x[s:s + 128].to(device)).float().cpu()
                               for s in range(0, len(x), 128)])
        sae = probing.sparse_probe(codes[train], y[train], codes[test], y[test], ev.ks,
                                   ev.reg_type, ev.seed)
        row = {"dataset_name": tag, **_baselines(x, y, train, test, ev, path)}
        for k in ev.ks:
            row.update(_by_k("sae_top", k, sae[k]))
        details.append(row)
    mean = {k: float(np.mean([r[k] for r in details])) for k in details[0]
            if k != "dataset_name"}
    metrics = {"llm": {k: v for k, v in mean.items() if k.startswith("llm_test")},
               "sae": {k: v for k, v in mean.items() if k.startswith("sae_top")},
               "llm_top_k": {k: v for k, v in mean.items() if k.startswith("llm_top")}}
    return metrics, details, None


def _baselines(x, y, train, test, ev: Evals, acts: Path) -> dict:
    """The probes on the raw residual (dense `llm_test_*`, k-sparse `llm_top_{k}_*`), the same
    for every dictionary at a layer: computed once, kept beside the activations."""
    key = json.dumps({"ks": ev.ks, "reg_type": ev.reg_type, "seed": ev.seed,
                      "dense": ev.dense_baseline}, sort_keys=True)
    path = acts.with_name(f"{acts.stem}-{hashlib.sha256(key.encode()).hexdigest()[:8]}.json")
    if path.exists():
        return json.loads(path.read_text())
    out = {}
    if ev.dense_baseline:
        dense = probing.find_best_reg(x[train], y[train], x[test], y[test], "l2", ev.seed)
        out = {"llm_test_accuracy": dense.test_acc, "llm_test_auc": dense.test_auc,
               "llm_test_f1": dense.test_f1}
    raw_k = probing.sparse_probe(x[train], y[train], x[test], y[test], ev.ks, ev.reg_type,
                                 ev.seed)
    for k in ev.ks:
        out.update(_by_k("llm_top", k, raw_k[k]))
    atomic_write_text(path, json.dumps(out))
    return out


def _by_k(prefix: str, k: int, m: probing.ProbeMetrics) -> dict:
    return {f"{prefix}_{k}_test_accuracy": m.test_acc, f"{prefix}_{k}_test_auc": m.test_auc,
            f"{prefix}_{k}_test_f1": m.test_f1}


def _activations(model, cfg: CellConfig, tag: str, ev: Evals, root: Path):
    """(x (rows, d_model), labels, train and test indices, the cache file) of a dataset at the
    cell's layer, each prompt's residual at its last position the dictionary acts on (the
    last token unless the cell skips or excludes it), from the cache when there."""
    prompts, y, size = probing.read_dataset(tag)
    y = y[:ev.max_rows]
    seq = min(ev.max_seq_len, model.cfg.n_ctx)  # cut from the left to what the model takes
    ids = [probing.prompt_ids(model.tokenizer, p, seq) for p in prompts[:ev.max_rows]]
    try:
        at = probing.last_kept(ids, positions_for(cfg.data, model.tokenizer, model.cfg.d_vocab))
    except ValueError as e:
        raise ConfigError(f"probing: dataset {tag}: {e}") from None
    key = {"model": model_key(cfg, root), "layer": cfg.layer, "dataset": tag,
           "max_rows": ev.max_rows, "max_seq_len": seq}
    if at != [len(i) - 1 for i in ids]:  # read elsewhere than sae-probes' last token
        key["at"] = hashlib.sha256(json.dumps(at).encode()).hexdigest()
    key = json.dumps(key, sort_keys=True)
    path = root / CACHE / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if path.exists():
        x = torch.load(path)
    else:
        t0 = time.perf_counter()
        x = probing.resid_at(model, ids, at, cfg.layer, ev.batch_size)
        print(f"evals: {tag}'s activations at layer {cfg.layer} ({len(ids):,} prompts, "
              f"{sum(map(len, ids)):,} tokens) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(x, tmp)
    train, test = probing.normal_split(y, size, ev.seed)
    return x, y, train, test, path


def model_key(cfg: CellConfig, root: Path) -> str:
    """The cache's name for the cell's model: its path relative to the root where it lies
    under it (a grid's own LM), so a root moved, copied or mounted elsewhere keeps its cache;
    else the name or path as given."""
    path = Path(cfg.model.name_or_path)
    if path.is_absolute() and path.is_relative_to(root.resolve()):
        return path.relative_to(root.resolve()).as_posix()
    return cfg.model.name_or_path


def _absorption(data: spelling.SpellingData, d, cfg: CellConfig, ev: Evals, root: Path,
                device: torch.device):
    metrics, details, extra = absorption.absorption_eval(d, data, ev.seed, ev.min_probe_f1,
                                                         ev.min_letters)
    return metrics, details, {**extra, "prompt_token_pos": data.position,
                              "words_left_out": data.dropped}


def _spelling(model, cfg: CellConfig, ev: Evals, root: Path) -> spelling.SpellingData:
    """The spelling task at the cell's layer, from the cache when there; SpellingError (one
    line) when the model spells too few letters, before it is cached."""
    # words whose token the cell excludes are left out (the dictionary never acts on them);
    # the key names them only where there are some, so other cells share one task
    tok = model.tokenizer
    named = tuple(i for i in positions_for(cfg.data, tok, model.cfg.d_vocab).exclude
                  if spelling.alpha_text(tok, tok.convert_ids_to_tokens(i)) is not None)
    key = {"model": model_key(cfg, root), "layer": cfg.layer, "eval": "spelling",
           "words": ev.words, "seed": ev.seed, **({"exclude": named} if named else {})}
    key = json.dumps(key, sort_keys=True)
    path = root / CACHE / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if path.exists():  # checked again: these options may ask more of it than the first run's
        data = spelling.SpellingData(**torch.load(path))
        data.check(ev.min_probe_f1, ev.min_letters)
        return data
    t0 = time.perf_counter()
    data = spelling.spelling_data(model, cfg.layer, ev.seed, ev.words, ev.batch_size, named)
    data.check(ev.min_probe_f1, ev.min_letters)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(dataclasses.asdict(data), tmp)
    print(f"evals: the spelling task at layer {cfg.layer} ({len(data.x_train)} + "
          f"{len(data.x_test)} words, {len(data.passed(ev.min_probe_f1))} letters spelled) in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return data
