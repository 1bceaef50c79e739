"""The auto-interp step (`autointerp`; its command line is `jobs/autointerp.py`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from e2e.autointerp import records
from e2e.autointerp.score import interpret, mean_ci
from e2e.io import atomic_write_text
from e2e.typed import ConfigError
from jobs.analysis.pages import refresh
from jobs.explain.endpoint import Endpoint, failure_summary
from jobs.explain.serve import served
from jobs.plan.autointerp import CACHE, FILE, AutoInterp
from jobs.report import autointerp as autointerp_report
from jobs.report.collect import collect
from jobs.report.results import existing_grid_dir, read_grid


def options(grid_dir: Path, overrides: dict) -> AutoInterp:
    """The grid's options with `overrides`; one line when the grid has none."""
    path = grid_dir / FILE
    if not path.exists() and not overrides:
        raise ConfigError(f"{path} is missing: submit the grid with autointerp=true, or give "
                          "base_url= and model= here")
    base = json.loads(path.read_text()) if path.exists() else {}
    return AutoInterp.from_json(json.dumps({**base, **overrides}))


def autointerp(root: Path | str, grid: str, ai: AutoInterp) -> Path:
    """Scores every recorded dictionary not yet scored with these options; returns the
    results folder."""
    grid_dir = existing_grid_dir(root, grid)
    results = grid_dir / "results"
    done = {c.id for c in read_grid(grid_dir) if c.status == "done"}
    records_dir = autointerp_report.records_dir(results)
    files = [p for p in sorted(records_dir.glob("*.npz")) if p.stem in done]
    todo = [p for p in files if _key(ai, p) != _old_key(results, p.stem)]
    print(f"auto-interp: {len(files)} dictionaries with records, {len(todo)} to score",
          flush=True)
    if not files and done:
        print(f"auto-interp: no records: the analysis saves them ({records_dir}); run it "
              f"again: python jobs/analyze.py grid={grid} root={root}", flush=True)
    if todo:
        with served(ai) as base_url:
            explainer, scorer = _endpoints(ai, base_url, Path(root).resolve() / CACHE)
            distinct = [explainer] + ([scorer] if scorer is not explainer else [])
            for e in distinct:
                e.check()  # one line before anything is sent
            t0 = time.perf_counter()
            for i, path in enumerate(todo):
                _score(ai, path, results, explainer, scorer)
                print(f"auto-interp {i + 1}/{len(todo)} [{time.perf_counter() - t0:.0f} s] "
                      f"{path.stem}: {sum(e.sent for e in distinct)} requests sent, "
                      f"{sum(e.cached for e in distinct)} answered from the cache, "
                      f"{sum(e.failed for e in distinct)} failed", file=sys.stderr, flush=True)
            if any(e.failed for e in distinct):  # one line: what the unanswered requests met
                print(f"auto-interp: {sum(e.failed for e in distinct)} requests got no usable "
                      f"answer ({failure_summary(distinct)}): counted per feature and scorer, "
                      "none cached; the scores hold what came, and a rerun asks only for "
                      "those again", flush=True)
    collect(root, grid)
    refresh(results)  # the scores in the feature browser
    return results


def _endpoints(ai: AutoInterp, base_url: str, cache: Path) -> tuple[Endpoint, Endpoint]:
    kw = dict(cache_dir=cache, api_key_env=ai.api_key_env, timeout_s=ai.timeout_s,
              retries=ai.retries)
    explainer = Endpoint(base_url, ai.explainer, **kw)
    scorer = explainer if ai.scorer == ai.explainer else Endpoint(base_url, ai.scorer, **kw)
    return explainer, scorer


def _key(ai: AutoInterp, path: Path) -> str:
    """What a dictionary's scores depend on: the options that change a prompt or a sample,
    and the records file."""
    d = dataclasses.asdict(ai)
    for k in ("base_url", "api_key_env", "concurrency", "timeout_s", "retries",
              "price_per_mtok", "serve_command", "serve_gpus", "time"):
        d.pop(k)
    d["records"] = path.stat().st_mtime_ns
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _old_key(results: Path, cell: str) -> str | None:
    path = results / autointerp_report.FOLDER / f"{cell}.json"
    return json.loads(path.read_text()).get("key") if path.exists() else None


def _score(ai: AutoInterp, path: Path, results: Path, explainer: Endpoint,
           scorer: Endpoint) -> None:
    recs = records.load(path)
    live = sorted(recs)
    rng = np.random.default_rng(ai.seed)
    feats = sorted(rng.choice(live, min(ai.n_features, len(live)), replace=False).tolist())

    def one(f: int) -> dict:
        return interpret(recs[f], explainer.chat, scorer.chat, ai.budget, ai.seed * 1_000_003 + f)

    with ThreadPoolExecutor(ai.concurrency) as ex:
        got = dict(zip(feats, ex.map(one, feats), strict=True))
    scores = {s: mean_ci([got[f][s] for f in feats], ai.seed) for s in ai.scorers}
    failed = {s: sum(got[f][f"{s}_failed"] for f in feats) for s in ai.scorers}
    unanswered = sum(got[f]["requests_failed"] for f in feats)
    if unanswered:  # scored with what came; the next run asks the rest (the cache: no more)
        print(f"auto-interp: {path.stem}: {unanswered} requests got no answer; run the step "
              "again to complete it", flush=True)
    entry = {"key": None if unanswered else _key(ai, path), "unanswered": unanswered,
             "explainer": ai.explainer, "scorer": ai.scorer,
             "budget": dataclasses.asdict(ai.budget), "n_live_recorded": len(live),
             "features": {str(f): _finite(got[f]) for f in feats},
             "scores": {s: [_none(v) for v in m] for s, m in scores.items()},
             "failed": failed}
    atomic_write_text(results / autointerp_report.FOLDER / f"{path.stem}.json",
                      json.dumps(entry, allow_nan=False))


def _none(v: float) -> float | None:
    return None if math.isnan(v) else v


def _finite(d: dict) -> dict:
    return {k: _none(v) if isinstance(v, float) else v for k, v in d.items()}
