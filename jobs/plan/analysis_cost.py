"""The analysis job's time limit, from a model of what it computes (issue 20, item 6), instead
of a flat allowance per cell.

Costs measured on this machine (2 CPU cores, 2 threads, float32; `benchmarks/bench_multidim.py`,
`benchmarks/bench_geometry.py`, and the clustering timed at five sizes), then scaled:
- geometry, per cell: the within-SAE and cross max-cosine passes, ≈ 3 passes of n_dict² · d_in
  multiply-adds; one 768 × 46,080 pass took 24 s.
- per dictionary of the Table 2 trio of each layer (local, e2e, e2e_ds and ksvd, paired by CE):
  - the codes: `multidim_tokens` eval tokens through the model up to the layer, and encoding;
  - spectral clustering of n_dict directions into n_dict / 25 clusters: a power law through
    the two largest measured sizes of its path (dense affinity up to 8,192 directions: 1,440 /
    2,880 / 5,760 in 1.7 / 4.1 / 19.5 s; sparse k-NN with LOBPCG above: 11,520 / 23,040 in
    74 / 469 s, exponent 2.67). At the paper's 46,080 elements and 1,843 clusters that is ≈ 50
    minutes per dictionary: the step's largest cost at that scale;
  - the mixture index: 500 Adam steps on 4 PC pairs of every cluster's points, 98 ns per
    point-step; the points are at most `multidim_tokens` × L0, and L0 is not known before
    training: the model takes L0 = d_in / 6 (128 for GPT-2, above the paper's Table 2 runs;
    21 on tiny, whose trio's L0 is 5-40 and whose points overlap): ≈ 8 minutes for GPT-2.
- the feature browser (`jobs.analysis.browser`): `BROWSER_TOKENS` eval tokens through the model per
  layer, and three encodings of them per dictionary (two scans, one pass for the contexts'
  windows); a DB-KSVD dictionary's encoding is matching pursuit, up to 4 · max_nnz steps of
  the same product. On the job's GPU when the grid's cells have one (`GPU_FLOPS`, not
  measured here), else on its CPUs; and the nearest directions of every page among every
  dictionary of its layer; plus `BROWSER_PAGE_S` of Python per page (building and writing
  it: 4.1 ms per page on the architectures grid here beyond the products, 2026-12-01, where
  the products alone gave 67 s for a measured 172 s). Its size: `BROWSER_PAGE_BYTES` per
  feature page, plus `BROWSER_NEAR_BYTES` for each of its `BROWSER_NEAREST` nearest
  directions in every other dictionary of its layer, and `BROWSER_ROW_BYTES` per dictionary
  element (measured: the demo grid, 11 dictionaries, 2026-11-30: 11.9 MB for 5,071 pages,
  288 KB for 11,264 table rows; the architectures grid, 50 dictionaries, 2026-12-01: 7,420
  bytes per page, 6,322 of them the 147 nearest directions).
Threads speed it up as √(threads / 2) (1 thread: 1.42× slower on the mixture fit). The limit is
twice the model plus 10 minutes (loading, the collector run inside it), capped at a day.
"""

from __future__ import annotations

import math

GEOMETRY_S = 3 * 24.0 / (46_080 ** 2 * 768)  # seconds per n_dict² · d_in, per cell
# The analysis step's defaults (`jobs.analysis.step.Options` takes them from here).
MULTIDIM_TOKENS = 20_000  # eval tokens whose codes feed the clusters' points
MIXTURE_STEPS = 500  # gradient-ascent steps of the mixture index (authors: 10,000)
BROWSER_TOKENS = 32_768  # eval tokens the feature browser scans per (model, layer, data)
BROWSER_FULL_MAX = 4_096  # dictionaries up to this size: a page for every firing feature
BROWSER_SAMPLE = 1_024  # larger dictionaries outside the Table 2 trio: pages for a sample
BROWSER_NEAREST = 3  # nearest directions a page lists per other dictionary of its layer
BROWSER_PAGE_S = 4e-3  # Python per page, on this machine's CPU
BROWSER_PAGE_BYTES = 1_100  # a page without its nearest directions
BROWSER_NEAR_BYTES = 43  # one nearest direction: (cell id, element, cosine, page flag)
BROWSER_ROW_BYTES = 26
GPU_FLOPS = 20e12  # fp32/TF32 matmuls on one A100-class GPU, a conservative guess
MIXTURE_S = 98e-9 * 4 * MIXTURE_STEPS  # seconds per point (4 PC pairs)
PLAN_L0_PER_WIDTH = 1 / 6
CODES_S_PER_FLOP = 1 / 30e9  # the model's forward
# Spectral clustering, n directions into n/25 clusters: (n, seconds) measured.
CLUSTER_DENSE = ((1_440, 1.7), (2_880, 4.1), (5_760, 19.5))
CLUSTER_SPARSE = ((11_520, 73.9), (23_040, 469.4))


def _power_law(points, n: float) -> float:
    (n0, t0), (n1, t1) = points[-2], points[-1]
    p = math.log(t1 / t0) / math.log(n1 / n0)
    return t1 * (n / n1) ** p


def cluster_seconds(n: int) -> float:
    """Spectral clustering of n directions (one cluster per 25), in seconds."""
    return _power_law(CLUSTER_DENSE if n <= 8_192 else CLUSTER_SPARSE, n)


def dictionary_seconds(n_dict: int, d_in: int, depth: int) -> float:
    """The multi-dimensional step of one dictionary, in seconds (the codes: 2 · 12 · d_in²
    FLOPs per token and block, through all `depth` blocks at most)."""
    codes = MULTIDIM_TOKENS * 2 * 12 * d_in * d_in * depth * CODES_S_PER_FLOP
    mixture = MIXTURE_S * MULTIDIM_TOKENS * d_in * PLAN_L0_PER_WIDTH
    return cluster_seconds(n_dict) + mixture + codes


def analysis_seconds(n_dicts: list[int], d_in: int, depth: int, n_layers: int,
                     cpus: int, browser_s: float = 0.0) -> float:
    """The analysis step's modelled seconds: geometry of every cell (dictionary sizes
    `n_dicts`, width `d_in`) and the multi-dimensional step of up to 4 dictionaries at each of
    `n_layers` hook layers (the largest size; a model of `depth` blocks), on `cpus` threads,
    and the feature browser's `browser_s` seconds."""
    geometry = sum(GEOMETRY_S * n * n * d_in for n in n_dicts)
    largest = max(n_dicts, default=0)
    multidim = 4 * n_layers * dictionary_seconds(largest, d_in, depth) if n_dicts else 0
    return (geometry + multidim) / math.sqrt(max(1, cpus) / 2) + browser_s


def browser_estimate(dicts: list[tuple[int, int, int]], d_in: int, depth: int,
                     gpu: bool) -> tuple[int, float, float]:
    """(feature pages at most, bytes, seconds) of the feature browser for dictionaries
    (layer, n_dict, ksvd max_nnz or 0): every element of a dictionary up to BROWSER_FULL_MAX
    and of the 4 largest per layer (the Table 2 trio and ksvd), BROWSER_SAMPLE of each other
    one; each page's nearest directions among every dictionary of its layer (the browser
    looks only among those of the page's seed: an upper bound)."""
    pages, flops, size = 0, 0.0, 0.0
    for layer in {x[0] for x in dicts}:
        sizes = sorted(((n, nnz) for lay, n, nnz in dicts if lay == layer), reverse=True)
        p = sum(n if n <= BROWSER_FULL_MAX or i < 4 else min(n, BROWSER_SAMPLE)
                for i, (n, _) in enumerate(sizes))
        flops += BROWSER_TOKENS * 24 * d_in * d_in * depth  # the model, once per layer
        flops += sum(3 * BROWSER_TOKENS * d_in * n * 2 * max(1, 4 * nnz) for n, nnz in sizes)
        flops += p * sum(n for n, _ in sizes) * d_in * 2  # nearest directions
        pages += p
        near = BROWSER_NEAREST * (len(sizes) - 1)  # each page's nearest directions
        size += p * (BROWSER_PAGE_BYTES + near * BROWSER_NEAR_BYTES)
    size += sum(x[1] for x in dicts) * BROWSER_ROW_BYTES
    seconds = flops / (GPU_FLOPS if gpu else 1 / CODES_S_PER_FLOP) + pages * BROWSER_PAGE_S
    return pages, size, seconds


SCAN_CHUNKS = 4.5  # the browser scan's peak in (CHUNK_TOKENS, n) floats (bench_scan_memory.py)


def analysis_mem_gb(dicts: list[tuple[int, int, int]], d_in: int, depth: int) -> int:
    """Host memory (--mem, GiB) of the analysis job for dictionaries (layer, n_dict, _): 2 GiB
    for Python and torch, the model's weights (12 d_in² per block, the embeddings not counted:
    at least 1 GiB), one layer's eval activations (BROWSER_TOKENS x d_in), every dictionary
    of the fullest layer loaded at once (encoder and decoder, 2 n d_in) and the scan's peak of
    the largest (SCAN_CHUNKS chunks of CHUNK_TOKENS x n), all in float32, doubled for what
    is not modelled (the browser's pages, the clusters' points)."""
    from e2e.analysis.features import CHUNK_TOKENS

    if not dicts:
        return 4
    per_layer: dict[int, int] = {}
    for layer, n, _ in dicts:
        per_layer[layer] = per_layer.get(layer, 0) + 2 * n * d_in
    floats = (BROWSER_TOKENS * d_in + max(per_layer.values())
              + SCAN_CHUNKS * CHUNK_TOKENS * max(n for _, n, _ in dicts))
    model = max(1.0, 12 * d_in * d_in * depth * 4 / 2**30)
    return math.ceil(2 * (2 + model + floats * 4 / 2**30))
