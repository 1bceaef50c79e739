"""The one interface of every dictionary kind: encode, decode, and SAELens's on-disk fields.

A dictionary maps activations x (..., d_in) to codes c (..., n_dict) and back to x_hat
(..., d_in); `dict_elements` is its (d_in, n_dict) matrix of unit-norm elements. Losses, packs,
the evaluation, the analyses and the collector only ever use this interface. Each kind says
which SAELens `architecture` values it is saved as and loads from (`e2e.saelens`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Dictionary(nn.Module):
    """Base class of the dictionary kinds (`e2e.sae.SAE`, `e2e.ksvd.dictionary.KSVDDictionary`)."""

    # SAELens `architecture` values this class is saved as and loads from.
    architectures: ClassVar[tuple[str, ...]] = ()
    d_in: int
    n_dict: int

    @property
    def dict_elements(self) -> torch.Tensor:
        """(d_in, n_dict) dictionary, each column of unit L2 norm."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (..., n_dict) of activations (..., d_in)."""
        raise NotImplementedError

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        """Reconstruction (..., d_in) of codes (..., n_dict)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (x_hat, c): reconstruction (..., d_in) and codes (..., n_dict)."""
        c = self.encode(x)
        return self.decode(c), c

    # -- SAELens's format -----------------------------------------------------------------
    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """The weights under SAELens's names (`W_dec` (n_dict, d_in), `b_dec`, ...), on CPU."""
        raise NotImplementedError

    def saelens_config(self) -> dict[str, Any]:
        """cfg.json's fields that say how to run this kind (architecture, its options); the
        fields every kind shares are added by `e2e.saelens.save_saelens`."""
        raise NotImplementedError

    @classmethod
    def from_saelens(cls, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]
                     ) -> Dictionary:
        """The dictionary a cfg.json and its weights describe; ValueError if this class cannot
        run it as written."""
        raise NotImplementedError
