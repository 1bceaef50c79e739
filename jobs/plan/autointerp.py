"""The auto-interpretability step's options (`autointerp=true autointerp.<field>=...` on
submit.py) and what it will ask for, for the dry run.

The step runs after the analysis (whose feature-browser pass saves each dictionary's records)
and asks an OpenAI-compatible endpoint: `base_url` (an external API, or a server started inside
the job with `serve=<model>`, e.g. vLLM on the job's own GPU; docs/autointerp.md).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields

from e2e.autointerp import SCORERS
from e2e.typed import ConfigError

SECONDS_PER_REQUEST = 3.0  # llama.cpp serving SmolLM2-135M on this machine's 2 cores: 1-5 s
RECORD_FEATURES = 512  # features per dictionary whose records the analysis saves (seeded)
FILE = "autointerp.json"  # the grid's options, written at submission, read by the step
CACHE = "_autointerp_cache"  # under the root: every answer, one file each (`jobs.explain.endpoint`)
RECORD_TOKENS = 17  # tokens per record: the browser's window, 8 on each side


# Prefixes of providers' keys that are also valid variable names (Groq, Hugging Face, GitHub,
# Google, Anthropic, OpenAI's underscore forms), and a name no one gives a variable: longer
# than 24 characters with lower-case letters and digits (variables are upper-case by custom).
KEY_PREFIXES = ("gsk_", "hf_", "ghp_", "gho_", "github_pat_", "AIza", "sk_", "xai_", "pplx_")


def looks_like_a_key(name: str) -> bool:
    """Whether a value given as a variable's name is more likely the key itself (a variable
    of that name that is set is taken as one: `hf_token`)."""
    long_mixed = (len(name) > 24 and re.search(r"[a-z]", name) is not None
                  and re.search(r"\d", name) is not None)
    return name.startswith(KEY_PREFIXES) or long_mixed


@dataclass(frozen=True)
class AutoInterp:
    base_url: str = ""  # e.g. http://127.0.0.1:8080/v1 or https://api.openai.com/v1
    model: str = ""  # the explainer (with serve=: the served model by default)
    scorer_model: str = ""  # "": the explainer's model
    api_key_env: str = ""  # the environment variable holding the key ("": none sent)
    n_features: int = 200  # live features per dictionary, seeded (the paper: ~200, Fig. 9)
    seed: int = 0
    scorers: tuple[str, ...] = SCORERS
    explain: int = 20  # top records shown to the explainer
    test: int = 10  # activating and silent records per classifier (detection, fuzzing)
    shown: int = 5  # examples per classifier prompt
    simulate: int = 10  # records simulated
    concurrency: int = 8  # features in flight at once
    timeout_s: float = 120.0  # per request
    retries: int = 5  # per request, exponential backoff (429, 5xx, connection errors)
    price_per_mtok: float = 0.0  # USD per million tokens: the dry run prints the cost
    serve: str = ""  # a model for the job to serve itself on its own GPU (no base_url)
    serve_command: str = "vllm serve {model} --host 127.0.0.1 --port {port}"
    serve_gpus: int = 1
    time: int = 0  # minutes for the job; 0: estimated from the requests

    def __post_init__(self) -> None:
        if self.api_key_env and (not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}",
                                                  self.api_key_env)
                                 or (looks_like_a_key(self.api_key_env)
                                     and self.api_key_env not in os.environ)):
            shown = f"{self.api_key_env[:3]}…({len(self.api_key_env)} characters)"
            raise ConfigError(f"autointerp.api_key_env= takes the name of the environment "
                              f"variable that holds the key, not a key (given {shown}: masked)")
        bad = [s for s in self.scorers if s not in SCORERS]
        if bad:
            raise ConfigError(f"autointerp.scorers={bad[0]!r} is invalid: must be among "
                              f"{list(SCORERS)}")
        if bool(self.base_url) == bool(self.serve):
            raise ConfigError("autointerp=true needs exactly one of autointerp.base_url=<an "
                              "OpenAI-compatible /v1 URL> or autointerp.serve=<a model the job "
                              "serves itself>")
        if not (self.model or self.serve):
            raise ConfigError("autointerp.model= is empty: name the model the endpoint serves")
        for name in ("n_features", "explain", "test", "shown", "simulate", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"autointerp.{name}={getattr(self, name)} is invalid: must "
                                  "be >= 1")
        for name, low in (("seed", 0), ("time", 0), ("retries", 0), ("price_per_mtok", 0),
                          ("serve_gpus", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"autointerp.{name}={getattr(self, name)} is invalid: must "
                                  f"be >= {low}")
        if self.timeout_s <= 0:
            raise ConfigError(f"autointerp.timeout_s={self.timeout_s} is invalid: must be > 0")
        if len(set(self.scorers)) != len(self.scorers):
            raise ConfigError(f"autointerp.scorers={list(self.scorers)} repeats a scorer")
        if self.serve:
            if "{port}" not in self.serve_command:
                raise ConfigError("autointerp.serve_command must hold {port} (and {model})")
            try:
                self.serve_command.format(model=self.serve, port=0)
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(f"autointerp.serve_command={self.serve_command!r}: only "
                                  f"{{model}} and {{port}} are filled in ({e!r})") from None
            if self.scorer_model not in ("", self.serve) or self.model not in ("", self.serve):
                raise ConfigError("autointerp.serve= serves one model: leave autointerp.model "
                                  "and autointerp.scorer_model empty (or equal to it)")

    @property
    def explainer(self) -> str:
        return self.model or self.serve

    @property
    def gpus(self) -> int:
        """The job's GPUs: the served model's (none to ask an external endpoint)."""
        return self.serve_gpus if self.serve else 0

    @property
    def scorer(self) -> str:
        return self.scorer_model or self.explainer

    @property
    def budget(self):
        """The `e2e.autointerp.score.Budget` of these options."""
        from e2e.autointerp.score import Budget

        return Budget(self.explain, self.test, self.shown, self.simulate, self.scorers)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> AutoInterp:
        known = {f.name for f in fields(cls)}
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()
             if k in known}
        return cls(**d)

    def minutes(self, dictionaries: int) -> int:
        """The job's time limit: `time`, else the requests at SECONDS_PER_REQUEST each,
        `concurrency` at a time, doubled, plus 10 minutes (a served model's load)."""
        requests = self.estimate(dictionaries)[0]
        return self.time or int(10 + 2 * requests * SECONDS_PER_REQUEST / self.concurrency / 60)

    def estimate(self, dictionaries: int) -> tuple[int, int]:
        """(requests, tokens) for `dictionaries` dictionaries of at least n_features live
        features each: every prompt at its full size (records of RECORD_TOKENS tokens of
        about 4 characters) plus its longest answer; an upper bound for fewer live features."""
        import numpy as np

        from e2e.autointerp import prompts
        from e2e.autointerp.records import SILENT, TOP, Record
        from e2e.autointerp.score import classify_tokens

        b = self.budget
        rec = Record([" tok"] * RECORD_TOKENS, np.ones(RECORD_TOKENS), TOP)
        silent = Record(rec.tokens, rec.acts * 0, SILENT)

        def size(messages, answer: int) -> int:
            return len(json.dumps(messages)) // 4 + answer

        expl = "x" * 80
        per = size(prompts.explain([rec] * b.explain), b.explain_tokens)
        for kind in ("detection", "fuzzing"):
            if kind in b.scorers:
                per += b.classify_prompts * size(
                    prompts.classify(kind, expl, [prompts.highlight(rec)] * b.shown),
                    classify_tokens(b.shown))
        if "simulation" in b.scorers:
            per += b.simulate * size(prompts.simulate(expl, silent.tokens), 12 * RECORD_TOKENS)
        n_feat = dictionaries * min(self.n_features, RECORD_FEATURES)
        return n_feat * b.requests(), n_feat * per


def n_dictionaries(plan) -> int:
    """The dictionaries a plan's auto-interp step scores: its cells' and children's on a model."""
    return sum(c.cfg.source == "model" for c in plan.cells + plan.children)

