"""Explain one feature and score the explanation: detection, fuzzing, simulation.

`interpret(records, explainer, scorer, budget, seed)` asks `explainer` for an explanation of
the feature's top records, then, on held-out records (interval samples and silent contexts,
never the ones explained), asks `scorer`:
- detection (Delphi): which plain examples show the feature; balanced accuracy, 0.5 = chance;
- fuzzing (Delphi): activating examples marked at their firing tokens against silent ones
  with as many random tokens marked (the mean count of firing tokens per activating example,
  rounded up); balanced accuracy;
- simulation (the paper's; Bills et al. 2023): the predicted 0-10 activation of every token of
  each record; the Pearson correlation between predicted and true codes over all of them.
  Departures from the paper's library: it simulates the same top 20 records it explained, we
  simulate held-out ones, half activating and half silent (Bills et al.'s "top and random"
  mix); a constant prediction scores 0 (no information), where a correlation is undefined;
  an answer that does not repeat the tokens leaves its record out (theirs predicts 0 there).
A chat is `chat(messages, json=False, max_tokens=...) -> str | None` (None: no answer after
the client's retries, counted in `requests_failed`: the step scores such a feature again on
its next run). A prompt without a usable answer leaves its examples out (Delphi) and is
counted in `<scorer>_failed`; a score is nan when nothing of its kind was usable, or when its
examples lack a class (a feature that fires in every context has no silent one: balanced
accuracy would cap at 0.5). A feature with no explanation is not scored.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from e2e.autointerp import SCORERS, prompts
from e2e.autointerp.records import INTERVAL, SILENT, TOP, Record

Chat = Callable[..., "str | None"]


@dataclass(frozen=True)
class Budget:
    explain: int = 20  # top records shown to the explainer (the paper's library: 20)
    test: int = 10  # activating and as many silent records per classifier
    shown: int = 5  # examples per classifier prompt (Delphi's default)
    simulate: int = 10  # records simulated, one prompt each
    scorers: tuple[str, ...] = SCORERS
    explain_tokens: int = 120  # answer lengths (max_tokens)
    simulate_tokens: int = 1000

    @property
    def classify_prompts(self) -> int:
        """Prompts per classifier and feature: its activating and silent records, `shown` at
        a time."""
        return math.ceil(2 * self.test / self.shown)

    def requests(self) -> int:
        """Prompts per feature."""
        n = 1 + sum(self.classify_prompts for s in self.scorers if s in ("detection", "fuzzing"))
        return n + (self.simulate if "simulation" in self.scorers else 0)


def classify_tokens(n: int) -> int:
    """The answer's max_tokens for a classifier prompt of n examples: a list of n 0/1s."""
    return 4 * n + 8


def interpret(records: list[Record], explainer: Chat, scorer: Chat, budget: Budget,
              seed: int) -> dict:
    """{"explanation": str, <scorer>: score, "<scorer>_failed": failed prompts, ...}."""
    top = [r for r in records if r.kind == TOP][:budget.explain]
    active = [r for r in records if r.kind == INTERVAL] or top  # a rare feature: reuse top
    silent = [r for r in records if r.kind == SILENT]
    pair = prompts.markers(records)  # << >> unless its texts hold them (code)
    answer = explainer(prompts.explain(top, pair), max_tokens=budget.explain_tokens)
    out: dict = {"explanation": prompts.parse_explanation(answer or ""),
                 "requests_failed": int(answer is None)}
    if not out["explanation"]:
        return {**out, **{s: float("nan") for s in budget.scorers},
                **{f"{s}_failed": 0 for s in budget.scorers}}
    rng = random.Random(seed)
    scorer = _counting(scorer, out)
    for kind in ("detection", "fuzzing"):
        if kind in budget.scorers:
            pairs = _samples(kind, active[:budget.test], silent[:budget.test], rng, pair)
            out[kind], out[f"{kind}_failed"] = _classify(kind, out["explanation"], pairs,
                                                         scorer, budget.shown, pair)
    if "simulation" in budget.scorers:
        half = budget.simulate // 2
        recs = active[:budget.simulate - half] + silent[:half]
        out["simulation"], out["simulation_failed"] = _simulate(out["explanation"], recs,
                                                                scorer, budget)
    return out


def _counting(chat: Chat, out: dict) -> Chat:
    """`chat`, adding its unanswered requests to out["requests_failed"]."""
    def counted(*args, **kw):
        answer = chat(*args, **kw)
        out["requests_failed"] += answer is None
        return answer

    return counted


def _samples(kind: str, active: list[Record], silent: list[Record], rng: random.Random,
             pair: prompts.Markers) -> list[tuple[str, bool]]:
    """(text, is the feature there) pairs, shuffled; fuzzing's marked with `pair`."""
    if kind == "detection":
        pairs = [("".join(r.tokens), r.activating) for r in active + silent]
    else:
        firing = [int((r.acts > 0).sum()) for r in active]
        n_wrong = max(1, math.ceil(sum(firing) / max(1, len(firing))))
        pairs = [(prompts.highlight(r, pair=pair), True) for r in active]
        for r in silent:
            marked = set(rng.sample(range(len(r.tokens)), min(n_wrong, len(r.tokens))))
            pairs.append((prompts.highlight(r, [i in marked for i in range(len(r.tokens))],
                                            pair), False))
    rng.shuffle(pairs)
    return pairs


def _classify(kind: str, explanation: str, pairs: list[tuple[str, bool]], chat: Chat,
              shown: int, pair: prompts.Markers) -> tuple[float, int]:
    truth, pred, failed = [], [], 0
    for i in range(0, len(pairs), shown):
        batch = pairs[i:i + shown]
        answer = chat(prompts.classify(kind, explanation, [t for t, _ in batch], pair),
                      max_tokens=classify_tokens(len(batch)))
        got = prompts.parse_list(answer or "", len(batch))
        if got is None:
            failed += 1
            continue
        truth += [y for _, y in batch]
        pred += got
    return balanced_accuracy(truth, pred), failed


def _simulate(explanation: str, records: list[Record], chat: Chat, budget: Budget
              ) -> tuple[float, int]:
    true, pred, failed = [], [], 0
    for r in records:
        answer = chat(prompts.simulate(explanation, r.tokens), json=True,
                      max_tokens=budget.simulate_tokens)
        got = prompts.parse_simulation(answer or "", len(r.tokens))
        if got is None:
            failed += 1
            continue
        true += r.acts.tolist()
        pred += got
    return (correlation(true, pred) if true else float("nan")), failed


def balanced_accuracy(truth: list[bool], pred: list[bool]) -> float:
    """(TP / P + TN / N) / 2, Delphi's `accuracy`; nan without both classes (Delphi takes a
    missing class's rate as 0, which caps a perfect score at 0.5)."""
    t, p = np.asarray(truth, bool), np.asarray(pred, bool)
    pos, neg = t.sum(), (~t).sum()
    if not (pos and neg):
        return float("nan")
    return float(((t & p).sum() / pos + (~t & ~p).sum() / neg) / 2)


def correlation(true: list[float], pred: list[float]) -> float:
    """Pearson correlation of predicted and true activations; 0 when either is constant."""
    a, b = np.asarray(true, float), np.asarray(pred, float)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def mean_ci(scores: list[float], seed: int = 0, n_resamples: int = 10_000
            ) -> tuple[float, float, float]:
    """Mean and bootstrap 95% interval (percentile) of the non-nan scores; nans if none."""
    x = np.asarray([s for s in scores if not math.isnan(s)], float)
    if not len(x):
        return (float("nan"),) * 3
    means = np.random.default_rng(seed).choice(x, (n_resamples, len(x))).mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi)
