"""What a feature dashboard shows of each element of a dictionary, from activations at its hook:
how often it fires, how strongly, on which tokens, and what its direction does to the logits.

The standard contents of a feature dashboard (Bricken et al. 2023; SAEDashboard / sae_vis;
Neuronpedia), computed for every element at once in bounded memory: the activations `acts`
(rows, context, d_in) of held-out tokens are encoded about `CHUNK_TOKENS` at a time and each pass
keeps running per-element state only (counts, extremes, top-k, histogram bins, samples).
- `scan`: activation density, mean and extreme non-zero values, the top-k firing positions
  (a running top-k merged chunk by chunk: equal to a full sort up to the order of tied values),
  a `bins`-bin histogram of the non-zero values over [min, max] (numpy's binning: equal to
  `np.histogram(v, bins)`), and `per_interval` random firing positions in each of `intervals`
  equal slices of (0, max] (SAEDashboard's "quantile" groups);
- `window_codes`: one element's codes on ± a window of tokens around given positions;
- `logit_effects`: the tokens a direction promotes and suppresses through the unembedding,
  `LOGIT_CHUNK` directions at a time.
A code is "firing" when non-zero; codes of DB-KSVD dictionaries are signed, so their minimum
can be negative; the intervals slice the positive part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

LOGIT_CHUNK = 2048  # directions per (chunk, vocab) product: 2,048 x 50,257 floats, 412 MB
CHUNK_TOKENS = 2048  # codes of 2,048 tokens x 46,080 elements: 377 MB per (t, n) float tensor


@dataclass
class FeatureStats:
    """Per-element statistics of one dictionary (n elements) over `n_tokens` tokens; positions
    are flat indices row * context + column into the scanned activations, -1 where fewer
    firing positions exist than asked for."""

    n_tokens: int
    count: np.ndarray  # (n,) firing tokens
    mean: np.ndarray  # (n,) mean non-zero code (nan if it never fires)
    max: np.ndarray  # (n,) largest code (0 if it never fires)
    min: np.ndarray  # (n,) smallest non-zero code (0 if it never fires)
    top_val: np.ndarray  # (n, k) largest codes, descending
    top_pos: np.ndarray  # (n, k)
    hist: np.ndarray  # (n, bins) counts of non-zero codes over [min, max]
    interval_pos: np.ndarray  # (n, intervals, per_interval): random positions by interval

    @property
    def density(self) -> np.ndarray:
        return self.count / max(1, self.n_tokens)

    def hist_range(self, i: int) -> tuple[float, float]:
        """The histogram's [lo, hi] of element i, as numpy's default range."""
        lo, hi = float(self.min[i]), float(self.max[i])
        return (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)


def merge_topk(vals: torch.Tensor, pos: torch.Tensor, new_vals: torch.Tensor,
               new_pos: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of two (n, ·) sets of (value, position), descending per row."""
    v = torch.cat([vals, new_vals], 1)
    p = torch.cat([pos, new_pos], 1)
    top = v.topk(min(k, v.shape[1]), dim=1)
    return top.values, p.gather(1, top.indices)


def _rows_per_chunk(acts: torch.Tensor) -> int:
    return max(1, CHUNK_TOKENS // acts.shape[1])


def _chunks(encode, acts: torch.Tensor, keep: torch.Tensor | None):
    """(flat offset, codes (rows · context, n)) of whole rows, about CHUNK_TOKENS at a time;
    zero outside `keep` (rows, context), the positions the dictionary does not act on."""
    rows, ctx = acts.shape[:2]
    step = _rows_per_chunk(acts)
    for r in range(0, rows, step):
        a = acts[r:r + step]
        yield r * ctx, _codes(encode, a, None if keep is None else keep[r:r + step])


def _codes(encode, a: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """float codes (rows · context, n) of whole rows `a`, zero outside `keep` (rows, context)."""
    c = encode(a.reshape(-1, a.shape[-1])).float()
    if keep is not None:
        c[~keep.reshape(-1).to(c.device)] = 0
    return c


@torch.no_grad()
def _first_pass(encode, acts: torch.Tensor, n: int, k: int, keep: torch.Tensor | None):
    dev = acts.device
    count = torch.zeros(n, dtype=torch.int64, device=dev)
    total = torch.zeros(n, dtype=torch.float64, device=dev)
    lo = torch.full((n,), float("inf"), device=dev)
    top_v = torch.full((n, 0), -float("inf"), device=dev)
    top_p = torch.full((n, 0), -1, dtype=torch.int64, device=dev)
    for off, c in _chunks(encode, acts, keep):  # c: (t, n)
        fires = c != 0
        count += fires.sum(0)
        total += c.sum(0, dtype=torch.float64)
        buf = torch.where(fires, c, float("inf"))  # the one (t, n) temporary, reused
        lo = torch.minimum(lo, buf.amin(0))
        buf.copy_(c).masked_fill_(~fires, -float("inf"))
        del c, fires
        t = buf.topk(min(k, buf.shape[0]), dim=0)
        del buf
        top_v, top_p = merge_topk(top_v, top_p, t.values.T, t.indices.T + off, k)
    top_p = torch.where(torch.isfinite(top_v), top_p, -1)
    hi = torch.where(count > 0, top_v[:, 0], 0.0)
    lo = torch.where(count > 0, lo, 0.0)
    return count, total, lo, hi, top_v, top_p


@torch.no_grad()
def scan(encode, acts: torch.Tensor, n: int, k: int = 20, bins: int = 32,
         intervals: int = 5, per_interval: int = 3, seed: int = 0,
         keep: torch.Tensor | None = None) -> FeatureStats:
    """Statistics of the n elements coded by `encode` ((t, d_in) -> (t, n)) on `acts`
    (rows, context, d_in), codes zero outside `keep` (rows, context; `e2e.model.positions`):
    two passes over the codes, neither holding the codes of more than about CHUNK_TOKENS
    tokens; on the activations' device (the samples' random priorities come from a generator
    seeded with `seed` there)."""
    dev = acts.device
    count, total, lo, hi, top_v, top_p = _first_pass(encode, acts, n, k, keep)
    # numpy's histogram: range [min, max] (± 0.5 when they are equal), equal-width bins, the
    # last one closed; the bin index as np.histogram computes it, in float64.
    lo64, hi64 = lo.double(), hi.double()
    same = lo64 == hi64
    lo64, hi64 = torch.where(same, lo64 - 0.5, lo64), torch.where(same, hi64 + 0.5, hi64)
    edges = torch.from_numpy(np.linspace(lo64.cpu().numpy(), hi64.cpu().numpy(), bins + 1,
                                         axis=1)).to(dev)
    hist = torch.zeros(n * bins, dtype=torch.int64, device=dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    s_pri = torch.full((n * intervals, 0), -1.0, device=dev)
    s_pos = torch.full((n * intervals, 0), -1, dtype=torch.int64, device=dev)
    cols = torch.arange(n, device=dev)
    for off, c in _chunks(encode, acts, keep):
        r, f = torch.nonzero(c, as_tuple=True)
        v = c[r, f].double()
        b = ((v - lo64[f]) / (hi64[f] - lo64[f]) * bins).floor().long().clamp_(0, bins - 1)
        b -= (v < edges[f, b]).long()  # numpy's corrections at the edges
        b += ((v >= edges[f, b + 1]) & (b != bins - 1)).long()
        hist += torch.bincount(f * bins + b, minlength=n * bins)
        del r, f, v, b
        # intervals of (0, max]: a uniformly random sample of each by random priorities;
        # q = ceil(c / max * intervals) in place (1..intervals where c > 0), and one buffer
        # for the masked priorities: the peak is about 4 (t, n) floats (bench_scan_memory.py)
        pri = torch.rand(c.shape, generator=gen, device=dev)
        q = c.div_(hi.clamp_min(1e-30)).mul_(intervals).ceil_()  # c is no longer needed
        m = torch.empty_like(pri)
        for j in range(intervals):
            m.copy_(pri).masked_fill_(q != j + 1, -1.0)
            t = m.topk(min(per_interval, m.shape[0]), dim=0)
            s_pri, s_pos = _merge_rows(s_pri, s_pos, t.values.T, t.indices.T + off,
                                       cols * intervals + j, per_interval)
        del q, m, pri
    s_pos = torch.where(s_pri >= 0, s_pos, -1).reshape(n, intervals, -1)
    mean = torch.where(count > 0, total / count.clamp_min(1), float("nan"))
    return FeatureStats(
        n_tokens=acts.shape[0] * acts.shape[1], count=_np(count), mean=_np(mean), max=_np(hi),
        min=_np(lo), top_val=_np(top_v), top_pos=_np(top_p), hist=_np(hist.reshape(n, bins)),
        interval_pos=_np(s_pos))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy()


def _merge_rows(pri, pos, new_pri, new_pos, rows, k):
    """merge_topk on the given rows of (pri, pos) only; rows are distinct."""
    if pri.shape[1] < k:  # first chunk: grow to k columns
        pad = k - pri.shape[1]
        pri = torch.cat([pri, torch.full((pri.shape[0], pad), -1.0, device=pri.device)], 1)
        pos = torch.cat([pos, torch.full((pos.shape[0], pad), -1, dtype=pos.dtype,
                                         device=pos.device)], 1)
    v, p = merge_topk(pri[rows], pos[rows], new_pri, new_pos, k)
    pri[rows], pos[rows] = v, p
    return pri, pos


@torch.no_grad()
def window_codes(encode, acts: torch.Tensor, element: np.ndarray, position: np.ndarray,
                 half: int, keep: torch.Tensor | None = None) -> np.ndarray:
    """(m, 2·half + 1) codes of `element[i]` on the tokens position[i] - half .. + half of
    the same row (nan outside the row, zero outside `keep`); one encoding of each row that
    holds a position."""
    rows, ctx = acts.shape[:2]
    out = np.full((len(element), 2 * half + 1), np.nan, dtype=np.float32)
    if not len(element):
        return out
    row = position // ctx
    offsets = np.arange(-half, half + 1)
    step = _rows_per_chunk(acts)
    for r0 in range(0, rows, step):
        sel = np.flatnonzero((row >= r0) & (row < r0 + step))
        if not len(sel):
            continue
        a = acts[r0:r0 + step]
        c = _codes(encode, a, None if keep is None else keep[r0:r0 + step]).reshape(
            a.shape[0], ctx, -1)
        col = (position[sel] % ctx)[:, None] + offsets
        ok = (col >= 0) & (col < ctx)
        rr = np.broadcast_to((row[sel] - r0)[:, None], col.shape)
        ee = np.broadcast_to(element[sel][:, None], col.shape)
        idx = [torch.from_numpy(np.ascontiguousarray(x[ok])).to(c.device) for x in (rr, col, ee)]
        block = out[sel]
        block[ok] = _np(c[idx[0], idx[1], idx[2]])
        out[sel] = block
    return out


def logit_effects(directions: torch.Tensor, w_u: torch.Tensor, k: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(promoted ids, their effects, suppressed ids, their effects), each (n, k): the k
    largest and smallest entries of d^T W_U for each direction d (columns of `directions`
    (d_in, n)) and the unembedding `w_u` (d_in, vocab); descending / ascending."""
    out = []
    for i in range(0, directions.shape[1], LOGIT_CHUNK):  # (chunk, vocab) at a time
        eff = directions[:, i:i + LOGIT_CHUNK].T.float() @ w_u.float()
        up, down = eff.topk(k, dim=1), eff.topk(k, dim=1, largest=False)
        out.append([up.indices, up.values, down.indices, down.values])
    return tuple(_np(torch.cat(parts)) for parts in zip(*out, strict=True))
