"""The paper's SAE (ReLU encoder, unit-norm dictionary), its TopK variant, and their SAELens
on-disk formats ("standard" and "topk")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from e2e.io import atomic_path, atomic_write_text

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"


class _UnitNormColumns(torch.autograd.Function):
    """w / ||w||_col (as F.normalize(w, dim=0)) with its gradient in one pass:
    dL/dw = (g - D * sum_rows(g * D)) / ||w||_col.

    Autograd's version of the same formula takes about twice as long on a 768 x 46,080
    dictionary (a division, its backward and the norm's backward, each a pass over the matrix).
    """

    @staticmethod
    def forward(ctx, w):
        inv_norm = torch.linalg.vector_norm(w, dim=0).clamp_min(1e-12).reciprocal()
        d = w * inv_norm
        ctx.save_for_backward(d, inv_norm)
        return d

    @staticmethod
    def backward(ctx, grad):
        d, inv_norm = ctx.saved_tensors
        return torch.addcmul(grad, d, (grad * d).sum(0), value=-1).mul_(inv_norm)


def unit_norm_columns(w: torch.Tensor) -> torch.Tensor:
    return _UnitNormColumns.apply(w)


class SAE(nn.Module):
    """c = ReLU(W_e x + b_e); x_hat = D c + b_d, with D's columns normalised in every forward.

    The raw decoder weight is unconstrained (Braun et al. 2024, Sec. 2); only the dictionary
    derived from it has unit-norm elements. No pre-encoder bias, no resampling.

    With `k`, the TopK SAE (Gao et al. 2024): the k largest pre-activations of each token are
    kept, then ReLU'd, the rest are zero (SAELens's "topk" architecture computes the same). The
    MFR authors' code kept negative values when fewer than k pre-activations were positive;
    codes here are non-negative, as in SAELens.
    """

    def __init__(self, d_in: int, n_dict: int, k: int | None = None):
        super().__init__()
        if k is not None and not 1 <= k <= n_dict:
            raise ValueError(f"sae.k={k} is invalid: must be in [1, {n_dict}] (the dictionary "
                             "size)")
        self.d_in, self.n_dict, self.k = d_in, n_dict, k
        self.encoder = nn.Linear(d_in, n_dict)  # nn.Linear's default init, as the paper
        self.decoder = nn.Linear(n_dict, d_in)  # weight (d_in, n_dict): one column per element
        nn.init.orthogonal_(self.decoder.weight)  # rows orthonormal when d_in < n_dict

    @property
    def dict_elements(self) -> torch.Tensor:
        """(d_in, n_dict) dictionary, each column of unit L2 norm."""
        return unit_norm_columns(self.decoder.weight)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.encoder(x)
        if self.k is None:
            return F.relu(pre)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, F.relu(top.values))

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        return F.linear(c, self.dict_elements, self.decoder.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (x_hat, c): reconstruction (..., d_in) and codes (..., n_dict)."""
        c = self.encode(x)
        return self.decode(c), c


def save_saelens(sae: SAE, out_dir: Path, meta: dict[str, Any]) -> None:
    """Writes `cfg.json` + `sae_weights.safetensors` as SAELens's "standard" architecture, or
    its "topk" architecture (with `k`) for a TopK SAE.

    W_dec holds the normalised dictionary, so loaders that do not renormalise see the SAE the
    forward pass used.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        "W_enc": sae.encoder.weight.detach().T.contiguous().cpu(),  # (d_in, d_sae)
        "b_enc": sae.encoder.bias.detach().contiguous().cpu(),
        "W_dec": sae.dict_elements.detach().T.contiguous().cpu(),  # (d_sae, d_in)
        "b_dec": sae.decoder.bias.detach().contiguous().cpu(),
    }
    cfg = {
        "architecture": "standard" if sae.k is None else "topk",
        **({} if sae.k is None else {"k": sae.k}),
        "d_in": sae.d_in,
        "d_sae": sae.n_dict,
        "dtype": "float32",
        "device": "cpu",
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": False,
        "finetuning_scaling_factor": False,
        "normalize_activations": "none",
        "hook_head_index": None,
        "prepend_bos": False,
        **meta,
    }
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_text(out_dir / CFG_FILE, json.dumps(cfg, indent=2, sort_keys=True))


def load_saelens(sae_dir: Path) -> tuple[SAE, dict[str, Any]]:
    """Loads an SAE saved by `save_saelens` (or any SAELens standard or topk SAE without b_dec
    input), or a ksvd cell's dictionary (`e2e.ksvd.KSVDDictionary`, the same interface)."""
    cfg = json.loads((Path(sae_dir) / CFG_FILE).read_text())
    if cfg.get("architecture") == "ksvd":  # a DB-KSVD dictionary: its own encoder
        from e2e.ksvd import load_ksvd

        return load_ksvd(sae_dir)
    if cfg.get("apply_b_dec_to_input"):
        raise ValueError(f"{sae_dir}: SAEs that subtract b_dec from the input are not this model")
    t = load_file(str(Path(sae_dir) / WEIGHTS_FILE))
    if cfg.get("architecture", "standard") not in ("standard", "topk"):
        raise ValueError(f"{sae_dir}: architecture {cfg['architecture']!r} is not this model")
    sae = SAE(cfg["d_in"], cfg["d_sae"], cfg.get("k") if cfg.get("architecture") == "topk"
              else None)
    sae.load_state_dict({
        "encoder.weight": t["W_enc"].T, "encoder.bias": t["b_enc"],
        "decoder.weight": t["W_dec"].T, "decoder.bias": t["b_dec"],
    })
    return sae, cfg
