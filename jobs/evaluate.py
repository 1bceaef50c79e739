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

`python jobs/evaluate.py sae=<SAELens folder> [model=<name or folder>] [root=runs]` evaluates
one SAE from any tool instead (probing and absorption; `jobs.analysis.evals.evaluate_folder`),
to `<root>/foreign/evals/<eval_type_id>/<folder name>_eval_results.json`.
"""

from __future__ import annotations

import dataclasses
import typing

import torch

from e2e.typed import ConfigError, from_text
from jobs import cli
from jobs.analysis.evals import evaluate, evaluate_folder
from jobs.plan.evals import Evals


@dataclasses.dataclass(frozen=True)
class Options:
    grid: str = ""
    root: str = "runs"
    sae: str = ""  # a SAELens folder from any tool, instead of a grid's dictionaries
    model: str = ""  # the model it reads (default: its cfg.json's model_name)
    device: typing.Literal["auto", "cpu", "cuda"] = "auto"


def main(*tokens: str) -> None:
    """grid= (or sae= [model=]), root=, device=, evals= (the names), then any other Evals
    field."""
    pairs, _ = cli.split_tokens(tokens)
    mine = ("grid", "root", "device", "sae", "model")
    own = [f"{k}={v}" for k, v in pairs if k in mine]
    o = cli.parse_options(own, Options)
    if bool(o.grid) == bool(o.sae):
        raise ConfigError("give grid=<name> (its dictionaries) or sae=<SAELens folder>, "
                          "not both" if o.grid else "give grid=<name> or sae=<SAELens folder>")
    if o.model and not o.sae:
        raise ConfigError("model= goes with sae=: a grid's cells name their own model")
    hints = {**typing.get_type_hints(Evals), "evals": tuple[str, ...]}
    hints.pop("names")
    bad = [k for k, _ in pairs if k not in hints and k not in mine]
    if bad:
        raise ConfigError(f"unknown key {bad[0]!r}; valid keys: {', '.join(mine)}, "
                          f"{', '.join(sorted(hints))}")
    fields = {("names" if k == "evals" else k): from_text(hints[k], v, k)
              for k, v in pairs if k in hints}
    if o.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: this machine has no CUDA GPU that torch can use "
                          "(device=auto picks one where there is)")
    if o.sae:
        fields.setdefault("names", ("probing", "absorption"))
        out = evaluate_folder(o.sae, o.model, o.root, Evals(**fields), o.device)
    else:
        out = evaluate(o.root, o.grid, Evals(**fields), o.device)
    print(f"evals: {out}")


if __name__ == "__main__":
    cli.run(main)
