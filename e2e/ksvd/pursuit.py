"""DB-KSVD's sparse coding (Valentin et al. 2025, the Julia package KSVD.jl) in batched torch:
matching pursuit (or OMP) with a least-squares refit, on CPU or GPU.

Shapes: activations Y are (n, d) rows; the dictionary D is (d, K) with unit-norm columns (atoms).
Codes are signed. They are kept sparse as entries (sample, atom, value), at most `max_nnz` per
sample, so a 65,536-sample batch of a 46,080-atom dictionary never needs a dense (n, K) matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Samples coded at once: the (rows, K) correlations and codes stay near 2^26 floats (256 MB).
_CODE_ELEMENTS = 2**26
# Ridge on the Gram matrix of a support (unit-norm atoms: diagonal 1) so that nearly collinear
# atoms still give a finite least-squares refit.
_RIDGE = 1e-6


@dataclass(frozen=True)
class Codes:
    """Sparse codes of n samples: entry i says sample[i] uses atom[i] with weight value[i]."""

    sample: torch.Tensor  # (E,) long
    atom: torch.Tensor  # (E,) long
    value: torch.Tensor  # (E,) float
    n: int

    def dense(self, k: int) -> torch.Tensor:
        out = torch.zeros(self.n, k, dtype=self.value.dtype, device=self.value.device)
        out[self.sample, self.atom] = self.value
        return out

    def reconstruct(self, d: torch.Tensor) -> torch.Tensor:
        """D x for every sample, (n, d_in)."""
        out = torch.zeros(self.n, d.shape[0], dtype=d.dtype, device=d.device)
        return out.index_add_(0, self.sample, self.value[:, None] * d.T.contiguous()[self.atom])


def _to_codes(support: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
              offset: int) -> Codes:
    """Per-row slots (n, m) -> entries, row-major (a coefficient cancelled to 0 is dropped)."""
    keep = mask & (value != 0)
    rows = torch.arange(support.shape[0], device=support.device)[:, None].expand_as(support)
    return Codes(rows[keep] + offset, support[keep], value[keep], support.shape[0])


def _concat(parts: list[Codes], n: int) -> Codes:
    return Codes(torch.cat([p.sample for p in parts]), torch.cat([p.atom for p in parts]),
                 torch.cat([p.value for p in parts]), n)


def _least_squares(y: torch.Tensor, atoms: torch.Tensor, support: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """Per row, argmin_z ||y - D[:, support] z|| over the masked-in slots (others get 0).

    y (n, d_in), atoms (K, d_in) (the dictionary's rows), support and mask (n, m): normal
    equations with a tiny ridge, batched.
    """
    picked = atoms[support] * mask[..., None]  # (n, m, d_in), empty slots zero
    gram = picked @ picked.transpose(1, 2)
    eye = torch.eye(support.shape[1], dtype=atoms.dtype, device=atoms.device)
    gram = gram + eye * (_RIDGE + (~mask)[..., None].to(atoms.dtype))  # identity on empty slots
    rhs = (picked @ y[..., None]).squeeze(-1)
    return torch.linalg.solve(gram, rhs) * mask


def _mp_rows(y: torch.Tensor, atoms: torch.Tensor, max_nnz: int, rtol: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain matching pursuit of rows y (n, d_in) in the atoms (K, d_in): per row, up to
    max_nnz (atom, signed coefficient) slots and their mask, each (n, max_nnz).

    KSVD.jl's rule: re-selecting an atom adds to its coefficient; at most 4 max_nnz steps;
    a row stops when ||r|| / ||y|| < rtol, or when its support exceeds max_nnz, after dropping
    its smallest-|coefficient| atom. The support is kept as slots, never as a dense (n, K)
    code, so memory stays at the (rows, K) correlations.
    """
    n, m, dev = y.shape[0], max_nnz + 1, atoms.device
    support = torch.zeros(n, m, dtype=torch.long, device=dev)
    value = torch.zeros(n, m, dtype=atoms.dtype, device=dev)
    count = torch.zeros(n, dtype=torch.long, device=dev)
    slots = torch.arange(m, device=dev)
    norm_y = torch.linalg.vector_norm(y, dim=1)
    limit = rtol * norm_y
    rows = torch.nonzero(norm_y > limit).flatten()
    r = y[rows].clone()
    for _ in range(4 * max_nnz):
        if rows.numel() == 0:
            break
        atom = (r @ atoms.T).abs_().argmax(1)
        picked = atoms[atom]
        coef = (r * picked).sum(1)
        r -= coef[:, None] * picked
        sup, cnt = support[rows], count[rows]
        hit = (sup == atom[:, None]) & (slots < cnt[:, None])
        again = hit.any(1)
        slot = torch.where(again, hit.to(torch.int8).argmax(1), cnt)
        support[rows, slot] = atom
        value.index_put_((rows, slot), coef, accumulate=True)
        count[rows] = cnt + (~again).long()
        over = count[rows] > max_nnz
        if over.any():  # drop the smallest: the last slot moves into its place
            o = rows[over]
            smallest = value[o].abs().argmin(1)
            support[o, smallest] = support[o, m - 1]
            value[o, smallest] = value[o, m - 1]
            count[o] = max_nnz
        done = over | (torch.linalg.vector_norm(r, dim=1) < limit[rows])
        rows, r = rows[~done], r[~done]
    mask = slots[:max_nnz] < count[:, None]
    return support[:, :max_nnz], value[:, :max_nnz] * mask, mask


def _omp_rows(y: torch.Tensor, atoms: torch.Tensor, max_nnz: int, rtol: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthogonal matching pursuit: each step adds the atom most correlated with the residual
    and refits all coefficients by least squares; up to max_nnz atoms or ||r|| / ||y|| < rtol.
    Returns slots as `_mp_rows`."""
    n = y.shape[0]
    support = torch.zeros(n, max_nnz, dtype=torch.long, device=atoms.device)
    mask = torch.zeros(n, max_nnz, dtype=torch.bool, device=atoms.device)
    z = torch.zeros(n, max_nnz, dtype=atoms.dtype, device=atoms.device)
    limit = rtol * torch.linalg.vector_norm(y, dim=1)
    active = torch.linalg.vector_norm(y, dim=1) > limit
    r = y.clone()
    for step in range(max_nnz):
        rows = torch.nonzero(active).flatten()
        if rows.numel() == 0:
            break
        support[rows, step] = (r[rows] @ atoms.T).abs_().argmax(1)
        mask[rows, step] = True
        z[rows] = _least_squares(y[rows], atoms, support[rows], mask[rows])
        r[rows] = y[rows] - (z[rows, :, None] * atoms[support[rows]]).sum(1)
        active[rows] = torch.linalg.vector_norm(r[rows], dim=1) >= limit[rows]
    return support, z, mask


def sparse_code(y: torch.Tensor, d: torch.Tensor, max_nnz: int, rtol: float = 0.05,
                coder: str = "mp", refit: bool = True) -> Codes:
    """Codes of rows y (n, d_in) in the unit-norm dictionary d (d_in, K), in row chunks."""
    if coder not in ("mp", "omp"):
        raise ValueError(f"coder={coder!r} is invalid: must be mp or omp")
    rows = max(1, _CODE_ELEMENTS // d.shape[1])
    atoms = d.T.contiguous()  # (K, d_in), once: row gathers from a transposed view are slow
    parts = []
    for start in range(0, y.shape[0], rows):
        chunk = y[start:start + rows]
        if coder == "omp":
            support, value, mask = _omp_rows(chunk, atoms, max_nnz, rtol)
        else:
            support, value, mask = _mp_rows(chunk, atoms, max_nnz, rtol)
            if refit:  # least squares on each support (KSVD.jl's `refit_coeffs`)
                value = _refit(chunk, atoms, support, mask)
        parts.append(_to_codes(support, value, mask, start))
    return _concat(parts, y.shape[0])


def _refit(y: torch.Tensor, atoms: torch.Tensor, support: torch.Tensor, mask: torch.Tensor
           ) -> torch.Tensor:
    """`_least_squares` in row chunks that keep the gathered atoms near 2^26 floats."""
    rows = max(1, _CODE_ELEMENTS // (support.shape[1] * atoms.shape[1]))
    return torch.cat([_least_squares(y[i:i + rows], atoms, support[i:i + rows],
                                     mask[i:i + rows])
                      for i in range(0, y.shape[0], rows)])


def residual(y: torch.Tensor, d: torch.Tensor, codes: Codes) -> torch.Tensor:
    return y - codes.reconstruct(d)


def objective(y: torch.Tensor, d: torch.Tensor, codes: Codes) -> float:
    """||Y - D X||_F^2."""
    return float(residual(y, d, codes).pow(2).sum())
