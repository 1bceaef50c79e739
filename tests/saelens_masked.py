"""Run by SAELens's own environment (.venv-saelens), not by pytest: attaches the SAE saved in
<sae dir> to a small seeded HookedSAETransformer as a SAELens user would, excluding the ids its
cfg.json names (`exclude_special_tokens`), runs <tokens.npy> and saves the hook's input and
output (after SAELens restored the excluded positions).

    python tests/saelens_masked.py <tokens.npy> <out.npz> <sae dir>
"""

import sys

import numpy as np
import torch
from sae_lens import SAE, HookedSAETransformer
from transformer_lens import HookedTransformerConfig

tokens = torch.from_numpy(np.load(sys.argv[1]))
sae = SAE.load_from_disk(sys.argv[3])
model = HookedSAETransformer(HookedTransformerConfig(
    n_layers=2, d_model=sae.cfg.d_in, n_ctx=tokens.shape[1], d_head=4, n_heads=2, d_vocab=20,
    act_fn="relu", seed=0))
model.add_sae(sae, exclude_special_tokens=sae.cfg.metadata.exclude_special_tokens)
with torch.no_grad():
    _, cache = model.run_with_cache(tokens)
hook = sae.cfg.metadata.hook_name
np.savez(sys.argv[2], x=cache[f"{hook}.hook_sae_input"].numpy(),
         out=cache[f"{hook}.hook_sae_output"].numpy(),
         exclude=np.array(sae.cfg.metadata.exclude_special_tokens),
         seqpos_slice=np.array(sae.cfg.metadata.seqpos_slice, dtype=object))
