"""DB-KSVD (Valentin et al. 2025, the Julia package KSVD.jl) in batched torch: sparse coding by
matching pursuit (or OMP) and the K-SVD dictionary update, on CPU or GPU.

Shapes: activations Y are (n, d) rows; the dictionary D is (d, K) with unit-norm columns (atoms).
Codes are signed. During fitting they are kept sparse as entries (sample, atom, value), at most
`max_nnz` per sample, so a 65,536-sample batch of a 46,080-atom dictionary never needs a dense
(n, K) matrix; `KSVDDictionary.encode` returns them dense (for the evaluation, which counts
and decodes them like an SAE's codes).

Where this differs from KSVD.jl, and why:
- The rank-1 SVD of each atom's restricted error is computed by power iteration warm-started at
  the atom itself (`power_iters` steps) instead of Arnoldi: it runs batched over a whole chunk
  of atoms on a GPU, and it lowers the objective whatever the number of steps (the error
  ||E - u uᵀE|| = ||E||² - ||Eᵀu||², and power iteration never lowers ||Eᵀu||).
- Atom chunks are sized by `atom_chunk` rather than by the number of threads.
- Each atom's sign makes its coefficients sum >= 0 (KSVD.jl: u[0] >= 0), see
  `update_dictionary`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from e2e.io import atomic_path, atomic_write_text

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


def update_dictionary(y: torch.Tensor, d: torch.Tensor, codes: Codes, atom_chunk: int,
                      generator: torch.Generator, power_iters: int = 10
                      ) -> tuple[torch.Tensor, Codes]:
    """One K-SVD sweep over all atoms; returns the new dictionary and codes (same supports).

    Atoms are shuffled and taken in chunks of `atom_chunk`: inside a chunk every atom k is
    updated against the same residual (Jacobi), and the residual is committed between chunks
    (Gauss-Seidel). For atom k with samples ω_k, E = R[ω_k] + x_k d_kᵀ (the error without k);
    its rank-1 SVD gives d_k = u and x_k = Eᵀu (= σ v), the sign chosen so that Σ x_k >= 0. An
    atom no sample uses becomes a random Gaussian unit vector (from `generator`, on the CPU, so
    that a resumed fit draws the same).
    """
    atoms = d.T.contiguous().clone()  # (K, d_in): atom rows gather fast; D is its transpose
    value = codes.value.clone()
    k = d.shape[1]
    r = residual(y, d, codes)
    order = torch.randperm(k, generator=generator).to(d.device)
    local_of = torch.full((k,), -1, dtype=torch.long, device=d.device)
    for chunk in order.split(atom_chunk):
        c = chunk.numel()
        local_of[chunk] = torch.arange(c, device=d.device)
        slot = local_of[codes.atom]  # each entry's atom's position in `chunk`, or -1
        local_of[chunk] = -1
        entry = torch.nonzero(slot >= 0).flatten()
        by_atom = slot[entry].argsort(stable=True)  # each atom's entries contiguous
        entry, slot = entry[by_atom], slot[entry][by_atom]
        counts = torch.bincount(slot, minlength=c)
        sums = _segment_sum(counts)  # (c, e) CSR: row a sums atom a's entries
        s, x_old = codes.sample[entry], value[entry]
        d_old = atoms[codes.atom[entry]]
        err = r[s] + x_old[:, None] * d_old  # (e, d_in): the columns of each atom's E
        u = atoms[chunk]
        for _ in range(power_iters):  # u <- E Eᵀ u, per atom
            v = torch.einsum("ed,ed->e", err, u.repeat_interleave(counts, dim=0))
            u_new = _csr_values(sums, v) @ err
            norm = torch.linalg.vector_norm(u_new, dim=1, keepdim=True)
            u = torch.where(norm > 0, u_new / norm.clamp_min(1e-30), u)
        used = counts > 0
        if not used.all():
            fresh = torch.randn(int((~used).sum()), atoms.shape[1], generator=generator)
            u[~used] = torch.nn.functional.normalize(fresh, dim=1).to(u)
        u_rep = u.repeat_interleave(counts, dim=0)
        x_new = torch.einsum("ed,ed->e", err, u_rep)
        # The sign: each atom points the way it is used (its coefficients sum >= 0), as an
        # SAE's features do, so cosines against SAE dictionaries or true features mean
        # something (KSVD.jl fixes u[0] >= 0 instead, an arbitrary choice).
        flip = torch.zeros(c, dtype=u.dtype, device=u.device).index_add_(0, slot, x_new) < 0
        sign = 1.0 - 2.0 * flip.to(u.dtype)
        u, u_rep, x_new = u * sign[:, None], u_rep * sign[slot, None], x_new * sign[slot]
        r.index_add_(0, s, x_old[:, None] * d_old - x_new[:, None] * u_rep)
        atoms[chunk] = u
        value[entry] = x_new
    return atoms.T.contiguous(), Codes(codes.sample, codes.atom, value, codes.n)


def _segment_sum(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The pattern of a (len(counts), sum(counts)) CSR matrix summing consecutive segments."""
    crow = torch.zeros(counts.numel() + 1, dtype=torch.long, device=counts.device)
    torch.cumsum(counts, 0, out=crow[1:])
    n = int(crow[-1])
    return crow, torch.arange(n, device=counts.device), n


def _csr_values(pattern: tuple[torch.Tensor, torch.Tensor, int], values: torch.Tensor
                ) -> torch.Tensor:
    """Segment sums as a sparse matrix: (csr @ dense) runs as one sparse GEMM on CPU and GPU,
    several times faster here than index_add_ over the same entries."""
    crow, col, n = pattern
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, size=(crow.numel() - 1, n),
                                       check_invariants=False)


def random_dictionary(d_in: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """KSVD.jl's start: U(-0.5, 0.5) entries, redrawn until full rank, columns normalised."""
    while True:
        w = torch.rand(d_in, k, generator=generator, dtype=torch.float64) - 0.5
        if torch.linalg.matrix_rank(w) == min(d_in, k):
            return torch.nn.functional.normalize(w, dim=0).float()


class KSVDDictionary(nn.Module):
    """A fitted dictionary as an SAE: encode = sparse coding of x - b_dec, decode = D c + b_dec.

    `forward` returns (x_hat, codes) like `e2e.sae.SAE`, so the evaluation runs it unchanged;
    codes are signed (L0 counts non-zeros).
    """

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


ARCHITECTURE = "ksvd"


def save_ksvd(model: KSVDDictionary, out_dir: Path, meta: dict[str, Any]) -> None:
    """SAELens's layout (cfg.json + sae_weights.safetensors with W_dec (d_sae, d_in), b_dec),
    architecture "ksvd". SAELens's own "matching_pursuit" cannot express this encoder: it keeps
    only positive coefficients, stops on an absolute residual norm, has no support budget and
    no least-squares refit, so a SAELens loader refuses this folder instead of running a
    different encoder on it."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {"W_dec": model.D.T.contiguous().cpu(), "b_dec": model.b_dec.contiguous().cpu()}
    cfg = {"architecture": ARCHITECTURE, "d_in": model.d_in, "d_sae": model.n_dict,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "max_nnz": model.max_nnz, "rtol": model.rtol, "coder": model.coder,
           "refit": model.refit, "normalize_activations": "none", "hook_head_index": None,
           "prepend_bos": False,
           "encoder": ("signed matching pursuit of x - b_dec over W_dec's rows: at most "
                       "4 max_nnz steps, stop when ||r||/||x - b_dec|| < rtol or the support "
                       "exceeds max_nnz (drop the smallest), then least squares on the support "
                       "if refit; decoder: codes @ W_dec + b_dec"),
           **meta}
    with atomic_path(out_dir / "sae_weights.safetensors") as tmp:
        save_file(tensors, str(tmp))
    atomic_write_text(out_dir / "cfg.json", json.dumps(cfg, indent=2, sort_keys=True))


def load_ksvd(sae_dir: Path) -> tuple[KSVDDictionary, dict[str, Any]]:
    from safetensors.torch import load_file

    cfg = json.loads((Path(sae_dir) / "cfg.json").read_text())
    t = load_file(str(Path(sae_dir) / "sae_weights.safetensors"))
    model = KSVDDictionary(t["W_dec"].T, t["b_dec"], cfg["max_nnz"], cfg["rtol"], cfg["coder"],
                           cfg["refit"])
    return model, cfg
