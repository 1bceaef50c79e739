"""`python jobs/evaluate.py grid=<name> [root=runs] [evals=[core,probing,absorption]]
[field=value ...]`: the evaluation step (issue 45).

Runs the field's evaluations on every finished dictionary of a grid on a language model
(`jobs.analysis.evals`): SAEBench's core metrics, sae-probes' sparse probing and SAEBench's
feature absorption (all three unless `evals=` names some), each written
as SAEBench writes it to
`<root>/<grid>/results/evals/<eval_type_id>/<cell>_eval_results.json`. A rerun
skips what is done with the same options; a killed step resumes at the dictionary it was on.
Fields (`jobs.plan.evals.Evals`): datasets, max_rows, max_seq_len, ks, reg_type, seed,
batch_size, dense_baseline, words, min_probe_f1, min_letters, layers (only those); and device
(auto, cpu, cuda).
"""

from __future__ import annotations

import dataclasses
import typing

import torch

from e2e.typed import ConfigError, from_text
from jobs import cli
from jobs.analysis.evals import evaluate
from jobs.plan.evals import Evals


@dataclasses.dataclass(frozen=True)
class Options:
    grid: str
    root: str = "runs"
    device: typing.Literal["auto", "cpu", "cuda"] = "auto"


def main(*tokens: str) -> None:
    """grid=, root=, device=, evals= (the names), then any other Evals field."""
    pairs, _ = cli.split_tokens(tokens)
    own = [f"{k}={v}" for k, v in pairs if k in ("grid", "root", "device")]
    o = cli.parse_options(own, Options)
    hints = {**typing.get_type_hints(Evals), "evals": tuple[str, ...]}
    hints.pop("names")
    bad = [k for k, _ in pairs if k not in hints and k not in ("grid", "root", "device")]
    if bad:
        raise ConfigError(f"unknown key {bad[0]!r}; valid keys: grid, root, device, "
                          f"{', '.join(sorted(hints))}")
    fields = {("names" if k == "evals" else k): from_text(hints[k], v, k)
              for k, v in pairs if k in hints}
    if o.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: this machine has no CUDA GPU that torch can use "
                          "(device=auto picks one where there is)")
    out = evaluate(o.root, o.grid, Evals(**fields), o.device)
    print(f"evals: {out}")


if __name__ == "__main__":
    cli.run(main)
