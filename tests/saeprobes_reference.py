"""Run by SAELens's own environment (.venv-saelens, with sae-probes 0.4.2), not by pytest:
sae-probes' own pipeline on a GPT-2 folder (`saelens_model.load_gpt2`) and an SAE folder, for
the given datasets of its wheel: its last-token activations at blocks.<layer>.hook_resid_pre
(`generate_single_dataset_activations`), its sparse probes on the SAE's latents (l1, "normal",
k = 1, 2, 5), the latents they were fitted on (`generate_sae_activations_normal`, saved as
codes_<dataset>.pt) and its logreg baseline on the residual, all written under <out dir>.

    python tests/saeprobes_reference.py <model dir> <sae dir> <layer> <max_seq_len> <out dir> \
        <dataset> [<dataset> ...]
"""

import sys
from pathlib import Path

import torch
from sae_lens import SAE
from sae_probes import run_baseline_evals, run_sae_evals
from sae_probes.constants import DATA_PATH
from sae_probes.generate_model_activations import generate_single_dataset_activations
from sae_probes.generate_sae_activations import generate_sae_activations_normal
from saelens_model import load_gpt2

model_dir, sae_dir, layer, max_seq_len, out, *datasets = sys.argv[1:]
out = Path(out)
hook = f"blocks.{layer}.hook_resid_pre"
model = load_gpt2(model_dir)
for d in datasets:  # its own tokenization and position rule, at this model's context length
    generate_single_dataset_activations(model, "tiny", DATA_PATH / "cleaned_data" / f"{d}.csv.zst",
                                        [hook], out / "acts", device="cpu",
                                        max_seq_len=int(max_seq_len))
sae = SAE.load_from_disk(sae_dir)
for d in datasets:
    torch.save(generate_sae_activations_normal(sae, d, hook, "tiny", "cpu", out / "acts")._asdict(),
               out / f"codes_{d}.pt")
run_sae_evals(sae, "tiny", hook, "l1", "normal", ks=[1, 2, 5],
              results_path=out / "sae", model_cache_path=out / "acts", datasets=datasets,
              device="cpu")
run_baseline_evals("tiny", hook, "normal", "logreg", results_path=out / "baseline",
                   model_cache_path=out / "acts", datasets=datasets, device="cpu")
