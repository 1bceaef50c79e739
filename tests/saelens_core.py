"""Run by SAELens's own environment (.venv-saelens), not by pytest: SAELens 6.54's own core
evaluation (`sae_lens.evals`, the code SAEBench's core copies) of the SAE folder on a model
folder (a GPT-2 written by transformers) and token batches, ignoring the given token ids; its
metrics written as JSON.

    python tests/saelens_core.py <model dir> <sae dir> <tokens.npy> <ignore ids,...> <out.json>
"""

import json
import sys

import numpy as np
import torch
from sae_lens import SAE
from sae_lens.evals import (
    get_downstream_reconstruction_metrics,
    get_featurewise_weight_based_metrics,
    get_sparsity_and_variance_metrics,
)
from sae_lens.training.activation_scaler import ActivationScaler
from saelens_model import load_gpt2

model_dir, sae_dir, tokens_file, ignore, out = sys.argv[1:6]
model = load_gpt2(model_dir)
sae = SAE.load_from_disk(sae_dir)
batches = torch.from_numpy(np.load(tokens_file))


class Store:  # the batches in order, again from the first for each pass
    def __init__(self):
        self.i = 0

    def get_batch_tokens(self, n):
        self.i += 1
        return batches[self.i - 1]


ids = [int(i) for i in ignore.split(",") if i]
n = len(batches)
recons = get_downstream_reconstruction_metrics(
    sae, model, Store(), ActivationScaler(), compute_kl=True, compute_ce_loss=True,
    n_batches=n, eval_batch_size_prompts=batches.shape[1], ignore_tokens=ids)
sparsity, features = get_sparsity_and_variance_metrics(
    sae, model, Store(), ActivationScaler(), n_batches=n, compute_l2_norms=True,
    compute_sparsity_metrics=True, compute_variance_metrics=True,
    compute_featurewise_density_statistics=True, eval_batch_size_prompts=batches.shape[1],
    model_kwargs={}, ignore_tokens=ids)
features |= get_featurewise_weight_based_metrics(sae)
with open(out, "w") as f:
    json.dump({"metrics": {**recons, **sparsity}, "features": features}, f)
