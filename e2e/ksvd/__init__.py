"""DB-KSVD (Valentin et al. 2025; KSVD.jl): sparse coding (`pursuit`), the K-SVD dictionary
update (`update`), the fitted dictionary as a `Dictionary` (`dictionary`), and a ksvd cell's
fit (`fit`, imported on its own: it needs the evaluation)."""

from e2e.ksvd.dictionary import KSVDDictionary
from e2e.ksvd.pursuit import Codes, objective, residual, sparse_code
from e2e.ksvd.update import random_dictionary, update_dictionary

__all__ = ["Codes", "KSVDDictionary", "objective", "random_dictionary", "residual",
           "sparse_code", "update_dictionary"]
