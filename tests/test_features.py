"""The feature browser's statistics (e2e.analysis.features) against from-scratch computations."""

from __future__ import annotations

import numpy as np
import torch

from e2e.analysis import features
from e2e.sae import SAE


def _setup(rows=37, ctx=48, d=8, n=24, k=None, seed=0):
    torch.manual_seed(seed)
    sae = SAE(d, n, k)
    with torch.no_grad():
        sae.encoder.bias.sub_(0.6)  # sparse-ish codes
        sae.encoder.bias[:2] = torch.tensor([-100.0, -1.6])  # one dead element, one rare
    acts = torch.randn(rows, ctx, d)
    codes = sae.encode(acts.reshape(-1, d)).detach()  # (t, n), flat position order
    return sae, acts, codes


def test_scan_equals_a_full_sort_and_numpy_histograms(monkeypatch):
    monkeypatch.setattr(features, "CHUNK_TOKENS", 100)  # many chunks, rows split unevenly
    sae, acts, codes = _setup()
    st = features.scan(sae.encode, acts, sae.n_dict, k=7, bins=11, intervals=4, per_interval=3)
    assert st.n_tokens == codes.shape[0]
    for i in range(sae.n_dict):
        v = codes[:, i].numpy()
        nz = np.flatnonzero(v)
        assert st.count[i] == len(nz)
        order = nz[np.argsort(-v[nz], kind="stable")][:7]
        got = st.top_pos[i][st.top_pos[i] >= 0]
        np.testing.assert_array_equal(got, order)  # continuous codes: no ties
        np.testing.assert_allclose(st.top_val[i][:len(order)], v[order])
        if len(nz):
            counts, edges = np.histogram(v[nz].astype(np.float64), bins=11)
            np.testing.assert_array_equal(st.hist[i], counts)
            np.testing.assert_allclose(st.hist_range(i), (edges[0], edges[-1]))
            np.testing.assert_allclose(st.mean[i], v[nz].astype(np.float64).mean(), rtol=1e-12)
            assert st.max[i] == v[nz].max() and st.min[i] == v[nz].min()
        else:
            assert st.hist[i].sum() == 0 and np.isnan(st.mean[i]) and st.max[i] == 0
        # interval samples: firing positions whose code lies in their interval of (0, max]
        for j in range(4):
            pos = st.interval_pos[i, j][st.interval_pos[i, j] >= 0]
            lo, hi = j * st.max[i] / 4, (j + 1) * st.max[i] / 4
            in_interval = np.flatnonzero((v > lo) & (v <= hi))
            assert len(pos) == min(3, len(in_interval)) and len(set(pos)) == len(pos)
            assert set(pos) <= set(in_interval)
    # the test covers elements that never fire, fire fewer times than k, and more often
    assert (st.count == 0).any() and ((st.count > 0) & (st.count < 7)).any()
    assert (st.count > 7).any()


def test_topk_codes_and_merge():
    sae, acts, codes = _setup(k=3)
    st = features.scan(sae.encode, acts, sae.n_dict, k=5)
    assert st.count.sum() == (codes != 0).sum()
    v, p = features.merge_topk(torch.tensor([[5.0, 1.0]]), torch.tensor([[0, 1]]),
                               torch.tensor([[3.0, 7.0]]), torch.tensor([[2, 3]]), 3)
    assert v.tolist() == [[7.0, 5.0, 3.0]] and p.tolist() == [[3, 0, 2]]


def test_window_codes_are_the_element_codes_around_each_position(monkeypatch):
    monkeypatch.setattr(features, "CHUNK_TOKENS", 100)
    sae, acts, codes = _setup()
    ctx = acts.shape[1]
    grid = codes.reshape(acts.shape[0], ctx, -1)
    rng = np.random.default_rng(0)
    element = rng.integers(0, sae.n_dict, 50)
    position = rng.integers(0, codes.shape[0], 50)
    position[:2] = [0, codes.shape[0] - 1]  # windows cut at both ends of a row
    w = features.window_codes(sae.encode, acts, element, position, half=4)
    for m in range(50):
        r, c = divmod(int(position[m]), ctx)
        for o in range(-4, 5):
            want = grid[r, c + o, element[m]].item() if 0 <= c + o < ctx else np.nan
            np.testing.assert_allclose(w[m, o + 4], want, rtol=1e-6, atol=1e-7)


def test_positions_a_dictionary_does_not_act_on_never_fire_in_the_scans(monkeypatch):
    """`keep` (`e2e.model.positions`: skipped and excluded tokens mid-row): their codes are zero
    in the statistics, the top and interval samples and the windows, as if the scan had seen
    codes zeroed there."""
    monkeypatch.setattr(features, "CHUNK_TOKENS", 100)
    sae, acts, codes = _setup()
    rows, ctx = acts.shape[:2]
    keep = torch.rand(rows, ctx, generator=torch.Generator().manual_seed(5)) > 0.3
    keep[:, 0] = False
    st = features.scan(sae.encode, acts, sae.n_dict, k=7, keep=keep)
    masked = codes * keep.reshape(-1, 1)
    assert (st.count == (masked != 0).sum(0).numpy()).all() and st.count.sum() > 0
    flat_keep = keep.reshape(-1).numpy()
    fired = st.top_pos[st.top_pos >= 0]
    assert flat_keep[fired].all() and flat_keep[st.interval_pos[st.interval_pos >= 0]].all()
    position = np.flatnonzero(~flat_keep)[:20]
    w = features.window_codes(sae.encode, acts, np.zeros(20, dtype=int), position, 2, keep)
    assert (w[:, 2] == 0).all()


def test_logit_effects_equal_a_from_scratch_product():
    torch.manual_seed(1)
    d = torch.nn.functional.normalize(torch.randn(6, 5), dim=0)
    w_u = torch.randn(6, 40)
    up, up_v, down, down_v = features.logit_effects(d, w_u, 4)
    for i in range(5):
        eff = [sum(d[j, i].item() * w_u[j, t].item() for j in range(6)) for t in range(40)]
        order = np.argsort(eff)
        np.testing.assert_array_equal(up[i], order[::-1][:4])
        np.testing.assert_array_equal(down[i], order[:4])
        np.testing.assert_allclose(up_v[i], np.array(eff)[order[::-1][:4]], rtol=1e-5)
        np.testing.assert_allclose(down_v[i], np.array(eff)[order[:4]], rtol=1e-5)


def test_the_scans_peak_is_a_small_multiple_of_one_chunk():
    """It was 10.3 (t, n) float chunks (+1,322 MiB at n 16,384); the analysis job now asks
    for memory from a model that takes 4.5 (`jobs.plan.analysis_cost.SCAN_CHUNKS`)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "benchmarks/bench_scan_memory.py", "8192"], cwd=repo,
                       capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert r.returncode == 0, r.stderr
    multiple = float(re.search(r"= ([\d.]+) x one", r.stdout).group(1))
    assert multiple < 6, r.stdout


def test_the_plan_asks_for_the_analysis_jobs_memory(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from jobs.plan.analysis_cost import analysis_mem_gb

    r = subprocess.run([sys.executable, "jobs/submit.py", "grid=smoke", f"root={tmp_path}",
                        "submit=false", "executor=slurm"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "-analyze" in x)
    assert "--mem=7G" in line
    # the paper's layer: 30 dictionaries of 46,080 elements, the scan, GPT-2's weights
    assert analysis_mem_gb([(6, 46_080, 0)] * 30, 768, 12) == 26
