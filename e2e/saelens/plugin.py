"""Our ksvd dictionaries in SAELens, for its users: `import e2e.saelens.plugin` registers the
architecture "ksvd" (SAELens's `register_sae_class`), after which `SAE.load_from_disk(<cell>/sae)`
returns a SAELens SAE whose encoder is the matching pursuit the dictionary was fitted with
(`e2e.ksvd.pursuit`, this package's code) and whose decoder is codes @ W_dec + b_dec: the same
forward as `e2e.ksvd.KSVDDictionary` (tests/test_saelens.py runs it in SAELens's own environment).

SAELens pins transformer-lens < 4 and this package 4.x, so the two live in separate environments:
put this repository on the SAELens environment's PYTHONPATH. What this module imports of ours
needs only torch and safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import SAE, SAEConfig, register_sae_class

from e2e.ksvd.pursuit import sparse_code


@dataclass
class KSVDSAEConfig(SAEConfig):
    """The fields `e2e.ksvd.KSVDDictionary.saelens_config` writes."""

    max_nnz: int = 8
    rtol: float = 0.05
    coder: str = "mp"
    refit: bool = True

    @classmethod
    def architecture(cls) -> str:
        return "ksvd"


class KSVDSAE(SAE[KSVDSAEConfig]):
    """Tied: no W_enc; codes are signed (L0 counts non-zeros)."""

    @property
    def W_enc(self) -> torch.Tensor:  # noqa: N802 (SAELens's name)
        return self.W_dec.T

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "W_enc":  # the base class initialises one
            super().__setattr__(name, value)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = self.process_sae_in(x)  # x - b_dec (apply_b_dec_to_input: true)
        flat = sae_in.reshape(-1, sae_in.shape[-1]).float()
        codes = sparse_code(flat, self.W_dec.T.float().contiguous(), self.cfg.max_nnz,
                            self.cfg.rtol, self.cfg.coder, self.cfg.refit)
        acts = codes.dense(self.cfg.d_sae).reshape(*sae_in.shape[:-1], self.cfg.d_sae)
        return self.hook_sae_acts_post(acts.to(self.dtype))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        return self.reshape_fn_out(self.run_time_activation_norm_fn_out(out), self.d_head)


register_sae_class("ksvd", KSVDSAE, KSVDSAEConfig)
