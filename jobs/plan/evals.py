"""The evaluation step's options (`python jobs/evaluate.py grid=<name> evals=[core,probing]`,
issue 45): which of the field's evaluations (`e2e.evals`) to run on every finished dictionary
of a grid, and how much of sparse probing's data. Each result file holds its options; a rerun
skips a dictionary already evaluated with equal ones."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from e2e.typed import ConfigError

EVALS = ("core", "probing")  # SAEBench's core; sae-probes' sparse probing
CACHE = "_evals_cache"  # under the root: activations per (model, layer, dataset, options)
# The probing datasets on CPU (16 of sae-probes' 113, one per kind of task, short prompts):
# people, headlines, science and commonsense truth, ethics, grammar, sentiment, clickbait,
# hate speech, places, time zones, art, arithmetic, time, emotion, sport.
CPU_DATASETS = ("5_hist_fig_ismale", "21_headline_istrump", "36_sciq_tf", "54_cs_tf",
                "51_just_is", "87_glue_cola", "92_glue_sst2", "105_click_bait", "106_hate_hate",
                "114_nyc_borough_Manhattan", "120_us_timezone_Chicago", "126_art_type_book",
                "129_arith_mc_A", "130_temp_cat_Frequency", "148_twt_emotion_worry",
                "154_athlete_sport_football")


@dataclass(frozen=True)
class Evals:
    names: tuple[str, ...] = EVALS
    datasets: tuple[str, ...] = CPU_DATASETS  # () : every binary dataset of the wheel
    max_rows: int = 5000  # sae-probes' MAX_AMT: the first rows of each dataset
    max_seq_len: int = 1024  # tokens per prompt, cut from the left
    ks: tuple[int, ...] = (1, 2, 5)  # SAEBench's k values
    reg_type: str = "l1"  # the sparse probes' penalty (SAEBench's default)
    seed: int = 42
    batch_size: int = 32  # prompts per forward pass

    def __post_init__(self) -> None:
        bad = [n for n in self.names if n not in EVALS]
        if bad or not self.names:
            raise ConfigError(f"evals={bad[0] if bad else '[]'!r} is not an evaluation: "
                              f"choose among {', '.join(EVALS)}")
        if self.reg_type not in ("l1", "l2"):
            raise ConfigError(f"reg_type={self.reg_type!r} must be l1 or l2")
        for name in ("max_rows", "max_seq_len", "batch_size"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 2")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"ks={list(self.ks)} must be positive")

    def probing_key(self) -> dict:
        """What a dictionary's probing results depend on besides the dictionary."""
        return {k: v for k, v in asdict(self).items() if k not in ("names", "batch_size")}
