"""DB-KSVD's dictionary update (Valentin et al. 2025; KSVD.jl): one K-SVD sweep over the atoms,
batched over chunks of atoms, on CPU or GPU.

Where this differs from KSVD.jl, and why:
- The rank-1 SVD of each atom's restricted error is computed by power iteration warm-started at
  the atom itself (`power_iters` steps) instead of Arnoldi: it runs batched over a whole chunk
  of atoms on a GPU, and it lowers the objective whatever the number of steps (the error
  ||E - u uᵀE|| = ||E||² - ||Eᵀu||², and power iteration never lowers ||Eᵀu||).
- Atom chunks are sized by `atom_chunk` rather than by the number of threads.
- Each atom's sign makes its coefficients sum >= 0 (KSVD.jl: u[0] >= 0), see
  `update_dictionary`.
- An atom no sample uses becomes the residual direction of the batch's worst-reconstructed
  sample not yet taken this sweep (KSVD.jl's default draws a random Gaussian atom; random atoms
  stay unused: on tiny's max_nnz 3 cell 157 of 1,024 atoms were dead at the end, redrawn after
  every batch; scikit-learn's MiniBatchDictionaryLearning found the same and resamples from
  the data). A residual direction is, by construction, an atom the next pursuit can use.
"""

from __future__ import annotations

import warnings

import torch

from e2e.ksvd.pursuit import Codes, residual


def update_dictionary(y: torch.Tensor, d: torch.Tensor, codes: Codes, atom_chunk: int,
                      generator: torch.Generator, power_iters: int = 10
                      ) -> tuple[torch.Tensor, Codes]:
    """One K-SVD sweep over all atoms; returns the new dictionary and codes (same supports).

    Atoms are shuffled and taken in chunks of `atom_chunk`: inside a chunk every atom k is
    updated against the same residual (Jacobi), and the residual is committed between chunks
    (Gauss-Seidel). For atom k with samples ω_k, E = R[ω_k] + x_k d_kᵀ (the error without k);
    its rank-1 SVD gives d_k = u and x_k = Eᵀu (= σ v), the sign chosen so that Σ x_k >= 0. An
    atom no sample uses becomes the current residual of a badly reconstructed sample, normalised:
    samples are taken in order of their residual norm at the start of the sweep, largest first,
    each at most once (a random Gaussian unit vector from `generator` if none is left).
    """
    atoms = d.T.contiguous().clone()  # (K, d_in): atom rows gather fast; D is its transpose
    value = codes.value.clone()
    k = d.shape[1]
    r = residual(y, d, codes)
    worst = iter(torch.linalg.vector_norm(r, dim=1).argsort(descending=True).tolist())
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
            u[~used] = _replacements(r, worst, int((~used).sum()), generator).to(u)
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


def _replacements(r: torch.Tensor, worst, n: int, generator: torch.Generator) -> torch.Tensor:
    """`n` unit atoms for unused ones: the residuals of the next samples in `worst` (an iterator
    over sample indices, largest residual first) whose residual is not zero, else random."""
    picked: list[int] = []
    while len(picked) < n:  # take no sample from `worst` that is not used here
        i = next(worst, None)
        if i is None:
            break
        if bool(r[i].abs().max() > 0):
            picked.append(i)
    out = torch.randn(n, r.shape[1], generator=generator).to(r)
    if picked:
        out[:len(picked)] = r[torch.tensor(picked, device=r.device)]
    return torch.nn.functional.normalize(out, dim=1)


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
