"""A DB-KSVD dictionary as a `Dictionary`: its encoder is the matching pursuit it was fitted
with, saved in SAELens's layout under the architecture "ksvd"."""

from __future__ import annotations

from typing import Any

import torch

from e2e.dictionary import Dictionary
from e2e.ksvd.pursuit import sparse_code

# How the encoder runs, in words, in every saved cfg.json.
ENCODER = ("signed matching pursuit of x - b_dec over W_dec's rows: at most 4 max_nnz steps, "
           "stop when ||r||/||x - b_dec|| < rtol or the support exceeds max_nnz (drop the "
           "smallest), then least squares on the support if refit; decoder: codes @ W_dec + "
           "b_dec")


class KSVDDictionary(Dictionary):
    """A fitted dictionary as an SAE: encode = sparse coding of x - b_dec, decode = D c + b_dec.

    `forward` returns (x_hat, codes) like `e2e.sae.SAE`, so the evaluation runs it unchanged;
    codes are signed (L0 counts non-zeros).
    """

    architectures = ("ksvd",)

    def __init__(self, dictionary: torch.Tensor, b_dec: torch.Tensor, max_nnz: int,
                 rtol: float = 0.05, coder: str = "mp", refit: bool = True):
        super().__init__()
        self.register_buffer("D", dictionary.float().contiguous())
        self.register_buffer("b_dec", b_dec.float().contiguous())
        self.max_nnz, self.rtol, self.coder, self.refit = max_nnz, rtol, coder, refit

    @property
    def d_in(self) -> int:
        return self.D.shape[0]

    @property
    def n_dict(self) -> int:
        return self.D.shape[1]

    @property
    def dict_elements(self) -> torch.Tensor:
        return self.D

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # pursuit in float32
            flat = x.reshape(-1, x.shape[-1]).float() - self.b_dec
            codes = sparse_code(flat, self.D, self.max_nnz, self.rtol, self.coder, self.refit)
            return codes.dense(self.n_dict).reshape(*x.shape[:-1], self.n_dict)

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        return (c.float() @ self.D.T + self.b_dec).to(c.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.encode(x)
        return self.decode(c).to(x.dtype), c

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {"W_dec": self.D.T.contiguous().cpu(), "b_dec": self.b_dec.contiguous().cpu()}

    def saelens_config(self) -> dict[str, Any]:
        # SAELens's own "matching_pursuit" cannot express this encoder: it keeps only positive
        # coefficients, stops on an absolute residual norm, has no support budget and no
        # least-squares refit, so a SAELens loader refuses this folder instead of running a
        # different encoder on it.
        return {"architecture": "ksvd", "apply_b_dec_to_input": True, "max_nnz": self.max_nnz,
                "rtol": self.rtol, "coder": self.coder, "refit": self.refit, "encoder": ENCODER}

    @classmethod
    def from_saelens(cls, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]
                     ) -> KSVDDictionary:
        return cls(tensors["W_dec"].T, tensors["b_dec"], cfg["max_nnz"], cfg["rtol"],
                   cfg["coder"], cfg["refit"])
