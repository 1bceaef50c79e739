"""`python jobs/autointerp.py root=<root> grid=<name> [field=value ...]`: the auto-interp step.

Runs after the analysis (its own SLURM job, `afterany` on the analysis; locally, after it),
whose feature-browser pass saved each dictionary's activation records
(`results/autointerp/records/<cell>.npz`). For each dictionary: `n_features` of its recorded
live features (seeded), each explained and scored (`e2e.autointerp.score`) through an
OpenAI-compatible endpoint, `concurrency` features at a time; its scores go to
`results/autointerp/<cell>.json`, then the collector runs again so that summary.csv,
results.h5, tables.md, the headline, `autointerp_fig9.png` and the feature browser show them.

Options: the grid's `autointerp.json` (written by submit.py from `autointerp.<field>=`), any
field overridden here. Every answer is cached under `<root>/_autointerp_cache/`: a killed job
resumes without asking again; a dictionary already scored with the same options and records is
skipped, so a rerun of a finished grid sends nothing and needs no endpoint. An endpoint that
does not answer is one line before any request, and the grid's other results stay as they are.
With `serve=<model>` the job starts `serve_command` itself, waits for it to answer, scores,
and stops it (`jobs.llm_serve`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from e2e.autointerp import records
from e2e.autointerp.score import interpret, mean_ci
from e2e.io import atomic_write_text
from e2e.typed import ConfigError, from_text
from jobs import autointerp_report, cli
from jobs.autointerp_config import CACHE, FILE, AutoInterp
from jobs.collect import collect
from jobs.llm_endpoint import Endpoint
from jobs.llm_serve import served
from jobs.results import existing_grid_dir, read_grid


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
    collect(root, grid)
    _browser(results)
    return results


def _browser(results: Path) -> None:
    """The scores in the feature browser, and its index's headline and plots as they are now
    (the analysis built it before the scores existed)."""
    from jobs.browser import Writer

    folder = results / "browser"
    data = folder / "data"
    if not data.is_dir():
        return
    autointerp_report.browser_data(results, Writer(data).put)
    text = (data / "index.js").read_text()
    index = json.loads(text[text.index(",") + 1:text.rindex(")")])
    index["headline"] = (results / "headline.txt").read_text()
    fig = results / autointerp_report.FIGURE
    if fig.exists():
        shutil.copy(fig, folder / fig.name)
        index["plots"] = sorted(set(index["plots"]) | {fig.name})
    Writer(data).put("index", "index", index)


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


@dataclasses.dataclass(frozen=True)
class Options:
    grid: str
    root: str = "runs"


def main(*tokens: str) -> None:
    """grid= and root=, then any AutoInterp field over the grid's autointerp.json."""
    pairs, _ = cli.split_tokens(tokens)
    own = [f"{k}={v}" for k, v in pairs if k in ("grid", "root")]
    o = cli.parse_options(own, Options)
    hints = typing.get_type_hints(AutoInterp)
    bad = [k for k, _ in pairs if k not in hints and k not in ("grid", "root")]
    if bad:
        raise ConfigError(f"unknown key {bad[0]!r}; valid keys: grid, root, "
                          f"{', '.join(sorted(hints))}")
    overrides = {k: from_text(hints[k], v, k) for k, v in pairs if k in hints}
    grid_dir = existing_grid_dir(o.root, o.grid)
    results = autointerp(o.root, o.grid, options(grid_dir, overrides))
    print((results / "headline.txt").read_text())


if __name__ == "__main__":
    cli.run(main)
