"""Run by SAELens's own environment (.venv-saelens, `make install`), not by pytest: loads each
folder with `sae_lens.SAE.load_from_disk` (our ksvd architecture registered by
`e2e.saelens.plugin`) and saves its forward and codes on the given inputs.

    python tests/saelens_forward.py <x.npy> <out.npz> <sae dir> [<sae dir> ...]
"""

import sys

import numpy as np
import torch
from sae_lens import SAE

import e2e.saelens.plugin  # noqa: F401  (registers "ksvd")

x = torch.from_numpy(np.load(sys.argv[1]))
out = {}
for i, folder in enumerate(sys.argv[3:]):
    sae = SAE.load_from_disk(folder)
    with torch.no_grad():
        out[f"forward{i}"] = sae(x).numpy()
        out[f"codes{i}"] = sae.encode(x).numpy()
np.savez(sys.argv[2], **out)
