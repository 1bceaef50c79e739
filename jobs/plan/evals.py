"""The evaluation step's options (`python jobs/evaluate.py grid=<name> evals=[core,probing]`,
issue 45): which of the field's evaluations (`e2e.evals`) to run on every finished dictionary
of a grid, and how much of sparse probing's data. Each result file holds its options; a rerun
skips a dictionary already evaluated with equal ones. `evals=[...]` on submit.py runs the step
as its own job after the analysis.

Its cost model (`Evals.minutes`), measured here (2 CPU cores, SmolLM2-135M at layer 12,
2026-12-07; docs/evals.md): per (layer, dataset) the activations of `max_rows` short prompts,
per dictionary and dataset the probes, per dictionary core's passes."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace

from e2e.evals import probing, spelling
from e2e.typed import ConfigError

EVALS = ("core", "probing", "absorption")  # SAEBench's core; sae-probes' sparse probing;
# SAEBench's feature absorption
FILE = "evals.json"  # the options submit.py was given, for the plain-sbatch step
CACHE = "_evals_cache"  # under the root: activations per (model, layer, dataset, options)
CORE_S = 20.0  # seconds per dictionary: three forwards of its evaluation batches
# seconds per (block run, dataset) at 5,000 rows: the prompts' forwards up to the layer,
# which they stop at (SmolLM2, 2 cores, 2026-12-07: layer 12 beside training 65 s a dataset,
# 5.4 a block; layer 6 alone 22 s, 3.6 a block; layer 18 alone about 2.2 a block)
ACTS_S = 5.5
DENSE_S = 5.0  # seconds per (layer, dataset): the raw residual's probes (3.3 s measured, one
# BLAS thread; 190 s on 2 threads before, benchmarks/bench_probing.py)
PROBE_S = 2.0  # seconds per (dictionary, dataset): its 3 k-sparse probes
# absorption, SmolLM2 on 2 cores (8,000 words, ~90-token prompts; 2026-12-07): the spelling
# task took 391 s at layer 6 and 667 s at layer 18 beside light tests (0.05 and 0.08 s a word),
# 1,427 s at layer 12 beside the test suite; a dictionary 7-8 s at layers 6 and 18, 20-25 s at
# layer 12 beside the suite. The bounds cover the first two with margin, not a machine shared
# with a test suite (about twice as slow).
SPELL_S = 0.1  # seconds per (layer, word): the prompts' residuals and the ground-truth probe
ABSORB_S = 30.0  # seconds per dictionary: its k-sparse probes (260 fits) and absorption
# The probing datasets on CPU (16 of sae-probes' 113, one per kind of task, short prompts):
# people, headlines, science and commonsense truth, ethics, grammar, sentiment, clickbait,
# hate speech, places, time zones, art, arithmetic, time, emotion, sport.
CPU_DATASETS = ("5_hist_fig_ismale", "21_headline_istrump", "36_sciq_tf", "54_cs_tf",
                "51_just_is", "87_glue_cola", "92_glue_sst2", "105_click_bait", "106_hate_hate",
                "114_nyc_borough_Manhattan", "120_us_timezone_Chicago", "126_art_type_book",
                "129_arith_mc_A", "130_temp_cat_Frequency", "148_twt_emotion_worry",
                "154_athlete_sport_football")


CPU_WORDS = 8000  # absorption's words on CPUs (of SmolLM2's 47,078; docs/evals.md)


@dataclass(frozen=True)
class Evals:
    names: tuple[str, ...] = EVALS
    # (): the 16 CPU_DATASETS where the job runs on CPUs, every binary dataset of the wheel
    # (113) on a GPU, as the issue's CPU bound and sae-probes' full run; `all`: every one
    datasets: tuple[str, ...] = ()
    max_rows: int = 5000  # sae-probes' MAX_AMT: the first rows of each dataset
    max_seq_len: int = 1024  # tokens per prompt, cut from the left
    ks: tuple[int, ...] = (1, 2, 5)  # SAEBench's k values
    reg_type: str = "l1"  # the sparse probes' penalty (SAEBench's default)
    seed: int = 42
    batch_size: int = 32  # prompts per forward pass
    # sae-probes' logreg on every dimension of the raw residual (SAEBench's `llm_test_*`): on
    # CPU about 3 s per (layer, dataset) at SmolLM2's width (lbfgs, 11 fits of 1,024 rows)
    dense_baseline: bool = True
    # absorption: how many of the vocabulary's letter-only words (shuffled) the task uses, 0
    # for all of them as SAEBench does (SmolLM2: 47,078); None: CPU_WORDS on CPUs, all on a GPU
    words: int | None = None
    min_probe_f1: float = 0.6  # SAEBench's min_GT_probe_f1: a letter the model spells
    min_letters: int = 20  # SAEBench's min_feats_for_eval: letters it must spell
    layers: tuple[int, ...] = ()  # only the dictionaries at these layers (): all of them

    def __post_init__(self) -> None:
        bad = [n for n in self.names if n not in EVALS]
        if bad or not self.names:
            raise ConfigError(f"evals={bad[0] if bad else '[]'!r} is not an evaluation: "
                              f"choose among {', '.join(EVALS)}")
        if len(set(self.names)) < len(self.names):
            raise ConfigError(f"evals={list(self.names)} names an evaluation twice")
        if not 0 <= self.seed < 2**32:  # numpy's RandomState draws the splits
            raise ConfigError(f"seed={self.seed} must be in [0, 2**32)")
        if not 0 <= self.min_probe_f1 <= 1:
            raise ConfigError(f"min_probe_f1={self.min_probe_f1} must be in [0, 1]")
        if self.reg_type not in ("l1", "l2"):
            raise ConfigError(f"reg_type={self.reg_type!r} must be l1 or l2")
        if self.words is not None and (self.words < 0 or 0 < self.words < 200):
            raise ConfigError(f"words={self.words} must be 0 (all) or at least 200")
        if not 0 < self.min_letters <= 26:
            raise ConfigError(f"min_letters={self.min_letters} must be 1 to 26")
        for name in ("max_rows", "max_seq_len", "batch_size"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 2")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"ks={list(self.ks)} must be positive")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Evals:
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in json.loads(text).items() if k in known})

    def minutes(self, dictionaries: int, layers: list[int], n_datasets: int = 0) -> int:
        """The job's time limit for `dictionaries` at `layers` (one entry per (model, layer)
        pair, its layer index: a forward runs that many blocks): twice the model plus 10
        minutes."""
        n = n_datasets or len(self.datasets) or 113
        s = dictionaries * CORE_S if "core" in self.names else 0.0
        if "probing" in self.names:
            s += sum(n * (ACTS_S * max(layer, 1) * self.max_rows / 5000
                          + DENSE_S * self.dense_baseline) for layer in layers)
            s += dictionaries * n * PROBE_S
        if "absorption" in self.names:
            s += len(layers) * SPELL_S * (self.words or 47078) + dictionaries * ABSORB_S
        return 10 + math.ceil(2 * s / 60)

    def on(self, gpu: bool) -> Evals:
        """These options for the machine the evaluations run on: the automatic datasets and
        words resolved (every one on a GPU, the stated subsets on CPUs), `all` spelled out."""
        datasets = self.datasets
        if datasets == ("all",) or (not datasets and gpu):
            datasets = tuple(probing.binary_datasets())
        words = self.words if self.words is not None else (0 if gpu else CPU_WORDS)
        return replace(self, datasets=datasets or CPU_DATASETS, words=words)

    def probing_key(self) -> dict:
        """What a dictionary's probing results depend on besides the dictionary."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("names", "batch_size", "words", "min_probe_f1", "min_letters",
                             "layers")}


def check_datasets(ev: Evals | None) -> Evals | None:
    """`ev`, or one line naming a dataset the wheel does not ship, or one whose first
    `max_rows` rows cannot hold the "normal" split, before anything runs."""
    if ev is None or "probing" not in ev.names:
        return ev
    tags = probing.binary_datasets()
    bad = [d for d in ev.datasets if d not in tags]
    if bad:
        raise ConfigError(f"datasets: {bad[0]!r} is not one of sae-probes 0.4.2's binary "
                          f"datasets ({len(tags)}: {', '.join(tags[:4])}, ...; "
                          "e2e.evals.probing.binary_datasets())")
    for tag in ev.datasets or tags:
        _, y, size = probing.read_dataset(tag)
        try:
            probing.normal_split(y[:ev.max_rows], size, ev.seed)
        except ValueError as e:
            raise ConfigError(f"max_rows={ev.max_rows}: dataset {tag}'s first {e}") from None
    return ev


def job_mem_gb(plan) -> int:
    """Host memory (--mem, GiB) of the evaluation job: 2 GiB for Python and torch, the model's
    weights (12 d_in² per block, at least 1 GiB), a forward's attention scores (batch x heads
    (d_in / 64) x max_seq_len², the model's peak), and the codes of the widest dictionary on
    the most rows an evaluation holds at once (probing's `max_rows`, absorption's words), all
    in float32, doubled for what is not modelled."""
    ev = plan.evals
    dicts, width, depth = plan._dicts
    widest = max((n for _, n, _ in dicts), default=4 * width)
    rows = max(ev.max_rows * ("probing" in ev.names),
               (ev.words or 47078) * ("absorption" in ev.names), 1)
    floats = (ev.batch_size * max(width // 64, 1) * ev.max_seq_len ** 2 + widest * rows)
    model = max(1.0, 12 * width * width * depth * 4 / 2**30)
    return math.ceil(2 * (2 + model + floats * 4 / 2**30))


def check_evals(ev: Evals | None, cells, n_ctx: int | None) -> Evals | None:
    """`ev` checked against a plan's cells (`check_datasets` too): one line for `layers` the
    grid has no dictionary at, or absorption on a model whose context cannot hold its prompts
    (where the context is known offline)."""
    if ev is None:
        return None
    have = sorted({c.cfg.layer for c in cells if c.cfg.source == "model"})
    missing = [layer for layer in ev.layers if layer not in have]
    if missing:
        raise ConfigError(f"evals.layers: the grid has no dictionary on a model at layer "
                          f"{missing[0]} (its layers: {have or 'none'})")
    if "absorption" in ev.names and n_ctx is not None and n_ctx < spelling.MIN_CONTEXT:
        raise ConfigError(f"absorption: its prompts ({spelling.MAX_ICL} in-context examples, "
                          f"as SAEBench's) need a context of {spelling.MIN_CONTEXT} tokens; "
                          f"the model's is {n_ctx}: leave absorption out of evals=")
    return check_datasets(ev)


def job_minutes(plan) -> int:
    """The evaluation job's limit (`Evals.minutes`) for a plan's dictionaries on a model, those
    at `layers` only where it names some."""
    ev = plan.evals
    cells = [c for c in plan.cells + plan.children if c.cfg.source == "model"
             and (not ev.layers or c.cfg.layer in ev.layers)]
    pairs = {(c.cfg.model.name_or_path, c.cfg.layer) for c in cells}
    return ev.minutes(len(cells), [layer for _, layer in pairs])
