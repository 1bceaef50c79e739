import csv
from dataclasses import replace

import h5py
import pytest

from e2e.config import CellConfig, LossConfig
from e2e.io import cell_paths
from e2e.store import write_metrics
from jobs.plan.grid import cell_id
from jobs.report import compare
from jobs.report.collect import collect
from jobs.report.compare import Point, ce_ratio_at_equal_l0, paired, reference

# (setting, λ, L0, CE increase): local's curve lies at twice e2e's CE increase.
RUNS = [("local", 1, 100, 0.02), ("local", 4, 40, 0.10), ("local", 10, 10, 0.40),
        ("e2e", 0.5, 90, 0.01), ("e2e", 1.5, 35, 0.05), ("e2e", 3, 12, 0.20),
        ("e2e_ds", 10, 80, 0.012), ("e2e_ds", 35, 30, 0.06)]


def _cell(root, setting, lam, seed=0):
    cfg = CellConfig(layer=6, seed=seed, loss=LossConfig(setting=setting, sparsity_coeff=lam))
    p = cell_paths(root / "g" / cell_id(cfg))
    p.root.mkdir(parents=True)
    p.config.write_text(cfg.to_json())
    return cfg, p


def _finished(root, setting, lam, l0, ce):
    cfg, p = _cell(root, setting, lam)
    ev = {"l0": l0, "ce_loss_increase": ce, "alive_dict_elements": 1000 - l0,
          "grad_norm": 0.5, "kl_orig_sae": ce / 2, "mse/blocks.6.hook_resid_pre": 0.1,
          "explained_variance/blocks.6.hook_resid_pre": 0.9, "mse/blocks.7.hook_resid_pre": 0.2}
    write_metrics(p.metrics, config_json=cfg.to_json(), train={"step": [0.0]},
                  eval_history={}, final_eval=ev, attrs={"train_time_s": 3600.0})
    p.done.write_text("ok")


@pytest.fixture
def half_finished(tmp_path):
    for run in RUNS:
        _finished(tmp_path, *run)
    _, p = _cell(tmp_path, "e2e", 0.1)  # running: a checkpoint, partial metrics
    p.checkpoint.write_bytes(b"x")
    _, p = _cell(tmp_path, "e2e", 0.2)  # failed, with its log
    (p.root / "FAILED").write_text("NonFiniteLossError: non-finite loss nan at step 7")
    p.log.write_text("start\nTraceback ...\nNonFiniteLossError: at step 7\n")
    _, p = _cell(tmp_path, "local", 0.3)  # corrupt: truncated HDF5
    p.metrics.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    _, p = _cell(tmp_path, "local", 0.4)  # DONE but no metrics
    p.done.write_text("ok")
    _cell(tmp_path, "local", 0.5)  # pending: config only
    return tmp_path


def test_collector_on_half_finished_grid(half_finished):
    out = collect(half_finished, "g")
    rows = list(csv.DictReader((out / "summary.csv").open()))
    status = {(r["setting"], float(r["sparsity_coeff"])): r["status"] for r in rows}
    assert len(rows) == len(RUNS) + 5
    assert status[("e2e", 0.1)] == "running" and status[("e2e", 0.2)] == "failed"
    assert status[("local", 0.3)] == "corrupt" and status[("local", 0.4)] == "missing_metrics"
    assert status[("local", 0.5)] == "pending"
    failed = [r for r in rows if r["status"] == "failed"][0]
    assert "step 7" in failed["reason"] and "Traceback" in failed["reason"]
    done = [r for r in rows if r["status"] == "done"]
    assert all(r["downstream_mse"] == "blocks.7.hook_resid_pre=0.2" for r in done)
    md = (out / "tables.md").read_text()
    for cid in (r["cell_id"] for r in rows if r["status"] != "done"):
        assert cid in md.split("Cells left out")[1]  # listed, not silently dropped
    assert "Table 2" in md and "Table 3" in md and "Table 6" in md and "1h00m00s" in md
    assert "\\begin{tabular}" in (out / "tables.tex").read_text()
    with h5py.File(out / "results.h5") as f:
        assert len(f) == len(rows)
    png = (out / "pareto_l0.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert (out / "pareto_alive.png").exists()
    headline = (out / "headline.txt").read_text()
    assert "layer 6: at equal L0" in headline and "e2e's CE loss increase is" in headline


def _points():
    return [Point(f"{s}{lam}", 6, s, lam, l0, 0, 0, ce, 0) for s, lam, l0, ce in RUNS]


def test_pairing_picks_the_e2e_run_with_the_closest_matches_and_reports_mismatch():
    pts = _points()
    # CE: e2e λ 1.5 (0.05) has matches 0.02 (60%) and 0.06 (20%); λ 0.5 and 3 do worse
    assert reference(pts, 6, "ce").lam == 1.5
    by_ce = {p.setting: (p.lam, round(m, 3)) for p, m in paired(pts, 6, "ce")}
    assert by_ce == {"local": (1, 0.6), "e2e": (1.5, 0.0), "e2e_ds": (35, 0.2)}
    # L0: e2e λ 0.5 (L0 90) has matches 100 and 80 (11% each); λ 1.5 (35) 14%; λ 3 150%
    by_l0 = {p.setting: (p.lam, round(m, 3)) for p, m in paired(pts, 6, "l0")}
    assert by_l0 == {"local": (1, 0.111), "e2e": (0.5, 0.0), "e2e_ds": (10, 0.111)}
    # a tie goes to the middle of the sweep
    flat = [p for p in pts if p.setting != "e2e_ds"]
    flat = [replace(p, ce_loss_increase=0.1) for p in flat]
    assert reference(flat, 6, "ce").lam == 1.5


def test_interpolated_ratio_over_shared_l0_range():
    # straight lines in L0: local CE = 0.5 - 0.004 L0, e2e = half of it
    pts = [Point("l", 6, "local", 1, x, 0, 0, 0.5 - 0.004 * x, 0) for x in (0, 50, 100)]
    pts += [Point("e", 6, "e2e", 1, x, 0, 0, (0.5 - 0.004 * x) / 2, 0) for x in (20, 80)]
    ratio, lo, hi = ce_ratio_at_equal_l0(pts, 6, "e2e")
    assert (lo, hi) == (20, 80) and ratio == pytest.approx(0.5)
    far = [Point("e", 6, "e2e", 1, x, 0, 0, 0.1, 0) for x in (200, 300)]
    assert ce_ratio_at_equal_l0(pts[:3] + far, 6, "e2e") is None  # no shared range
    # a geometric mean of pointwise ratios: 1/4 over one half of the range, 1 over the other
    pts = [Point("l", 6, "local", 1, x, 0, 0, 1.0, 0) for x in (0, 100)]
    pts += [Point("e", 6, "e2e", 1, x, 0, 0, y, 0) for x, y in ((0, 0.25), (49.99, 0.25),
                                                                  (50.01, 1.0), (100, 1.0))]
    assert ce_ratio_at_equal_l0(pts, 6, "e2e", n=1000)[0] == pytest.approx(0.5, rel=0.01)


def test_paper_grid_prints_the_papers_numbers(tmp_path):
    cfg = CellConfig(layer=6)
    p = cell_paths(tmp_path / "paper" / cell_id(cfg))
    p.root.mkdir(parents=True)
    p.config.write_text(cfg.to_json())
    md = (collect(tmp_path, "paper") / "tables.md").read_text()
    assert "Paper (GPT-2 small), Table 2" in md and "| 6 | e2e | 3 | 27.5 | 22000 | 0.145 |" in md


def test_second_half_change_compares_the_final_eval_with_the_first_of_the_second_half():
    from jobs.report.convergence import second_half_change

    h = {"step": [100, 200, 300, 400], "ce_loss_increase": [0.1, 0.05, 0.045, 0.04],
         "l0": [80, 50, 49, 49]}
    ch = second_half_change(h, 400)
    assert ch["ce_loss_increase"] == pytest.approx(0.25) and ch["l0"] == pytest.approx(1 / 49)
    assert all(v != v for v in second_half_change({}, 400).values())  # NaN: no history


def test_unconverged_cells_are_flagged_in_tables_and_headline(tmp_path):
    for lam, late_ce in ((1, 0.0205), (4, 0.05)):  # converged (2.5%), not (150%)
        cfg, p = _cell(tmp_path, "local", lam)
        ev = {"l0": 50.0, "ce_loss_increase": 0.02, "alive_dict_elements": 900, "grad_norm": 1}
        hist = {"step": [100.0, 300.0, 600.0], "ce_loss_increase": [0.1, late_ce, 0.02],
                "l0": [90.0, 50.5, 50.0]}
        write_metrics(p.metrics, config_json=cfg.to_json(), train={"step": [0.0]},
                      eval_history=hist, final_eval=ev, attrs={"n_steps": 600})
        p.done.write_text("ok")
    out = collect(tmp_path, "g")
    assert "not converged: 1 of 2 finished cells" in (out / "headline.txt").read_text()
    md = (out / "tables.md").read_text()
    assert "## Convergence" in md and md.count("not converged: compare with care") == 1
    rows = {float(r["sparsity_coeff"]): r for r in csv.DictReader((out / "summary.csv").open())}
    assert float(rows[4.0]["ce_change_2nd_half"]) == pytest.approx(1.5)
    assert float(rows[1.0]["ce_change_2nd_half"]) == pytest.approx(0.025)


def test_tables_print_each_pairs_mismatch_and_flag_pairs_that_are_not_similar():
    from jobs.report.tables import render

    md, _ = render(_points(), not_done=[], headline=[], paper=False)
    t2 = md.split("## Table 2")[1].split("## Table 3")[0]
    assert "| 6 | local | 1 | 100.0 |" in t2 and "60% (not similar) |" in t2
    assert "| reference |" in t2 and "| 20% |" in t2


def test_ksvd_cells_are_a_fourth_curve_in_the_headline_tables_and_plots(tmp_path):
    for run in RUNS:
        _finished(tmp_path, *run)
    for nnz, l0, ce in ((8, 8, 0.3), (32, 30, 0.04), (96, 90, 0.01)):
        cfg = CellConfig.from_dict({"layer": 6, "ksvd": {"max_nnz": nnz},
                                    "loss": {"setting": "ksvd", "sparsity_coeff": 0.0}})
        p = cell_paths(tmp_path / "g" / cell_id(cfg))
        p.root.mkdir(parents=True)
        p.config.write_text(cfg.to_json())
        write_metrics(p.metrics, config_json=cfg.to_json(), train={"step": [0.0]},
                      eval_history={}, final_eval={"l0": l0, "ce_loss_increase": ce},
                      attrs={"train_time_s": 60.0})
        p.done.write_text("ok")
    out = collect(tmp_path, "g")
    headline = (out / "headline.txt").read_text()
    assert "ksvd's CE loss increase is" in headline and "of local's" in headline
    assert "ksvd: a dictionary fitted to the activations by DB-KSVD" in headline
    md = (out / "tables.md").read_text()
    t2 = md.split("## Table 2")[1].split("## Table 3")[0]
    assert "| 6 | ksvd | 32 |" in t2  # nearest to the reference's CE (0.05): max_nnz 32
    assert "| layer | local | e2e | e2e_ds | ksvd |" in md  # Table 6
    rows = {r["cell_id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert sorted(r["max_nnz"] for r in rows.values() if r["setting"] == "ksvd") == \
        ["32", "8", "96"]


def test_each_architecture_is_compared_with_its_own_local_and_drawn_on_its_own(tmp_path):
    """Issue 22: BatchTopK's e2e against BatchTopK's local (not the ReLU local), at half its
    CE increase all along; ReLU's lines as before; a Pareto plot per architecture."""
    from e2e.config import SAEConfig

    for run in RUNS:
        _finished(tmp_path, *run)
    for setting, scale in (("local", 1.0), ("e2e", 0.5)):
        for k, l0 in ((8, 10), (32, 40), (64, 100)):
            cfg = CellConfig(layer=6, sae=SAEConfig(activation="batchtopk", k=k),
                             loss=LossConfig(setting=setting, sparsity_coeff=0.0))
            p = cell_paths(tmp_path / "g" / cell_id(cfg))
            p.root.mkdir(parents=True)
            ev = {"l0": l0, "ce_loss_increase": scale * 4 / l0, "alive_dict_elements": 500,
                  "grad_norm": 0.5}
            write_metrics(p.metrics, config_json=cfg.to_json(), train={"step": [0.0]},
                          eval_history={}, final_eval=ev, attrs={"train_time_s": 60.0})
            p.config.write_text(cfg.to_json())
            p.done.write_text("ok")
    out = collect(tmp_path, "g")
    headline = (out / "headline.txt").read_text()
    assert ("layer 6: at equal L0 (10.0-100.0), batchtopk/e2e's CE loss increase is 50% of "
            "batchtopk/local's") in headline
    relu = ce_ratio_at_equal_l0(_points(), 6, "e2e")[0]  # ReLU's alone, unchanged
    assert f"(12.0-90.0), e2e's CE loss increase is {100 * relu:.0f}% of local's" in headline
    assert (out / "pareto_l0_batchtopk.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["curve"] for r in rows} >= {"batchtopk/local", "batchtopk/e2e", "local"}


def test_the_headline_compares_only_the_curves_the_grid_trained_at_each_layer(tmp_path):
    """grid=architectures trains local and e2e: its headline has no "e2e_ds vs local: not
    comparable" or ksvd line; a setting or architecture with cells that did not finish gets
    its line saying why; an architecture trained only at another layer gets none here."""
    from e2e.config import SAEConfig

    for run in RUNS:
        if run[0] != "e2e_ds":
            _finished(tmp_path, *run)
    headline = (collect(tmp_path, "g") / "headline.txt").read_text()
    assert "e2e's CE loss increase is" in headline
    assert "e2e_ds" not in headline and "ksvd" not in headline
    _cell(tmp_path, "e2e_ds", 3.0)  # pending
    for layer, setting in ((6, "e2e"), (9, "local")):  # pending, an architecture
        cfg = CellConfig(layer=layer, sae=SAEConfig(activation="batchtopk", k=8),
                         loss=LossConfig(setting=setting, sparsity_coeff=0.0))
        (tmp_path / "g" / cell_id(cfg)).mkdir()
        (tmp_path / "g" / cell_id(cfg) / "config.json").write_text(cfg.to_json())
    lines = (collect(tmp_path, "g") / "headline.txt").read_text().splitlines()
    assert lines[:3] == [
        lines[0],  # e2e vs local, as before
        "layer 6: e2e_ds vs local: not comparable: needs >= 2 finished runs of each "
        "(local 3, e2e_ds 0)",
        "layer 6: batchtopk/e2e vs batchtopk/local: not comparable: needs >= 2 finished runs "
        "of each (batchtopk/local 0, batchtopk/e2e 0)"]
    assert lines[0].startswith("layer 6: at equal L0") and "layer 9" not in "\n".join(lines)


def test_a_comparison_that_cannot_be_made_says_why():
    points = _points()
    shifted = [replace(p, l0=p.l0 + 200) for p in points if p.setting == "e2e"]
    others = [p for p in points if p.setting != "e2e"]
    assert compare.not_comparable(others + shifted, 6, "e2e", "local") == (
        "their L0 ranges share no interval (local 10.0-100.0, e2e 212.0-290.0)")
    negative = [replace(p, ce_loss_increase=-0.01) for p in points if p.setting == "e2e"]
    assert compare.ce_ratio_at_equal_l0(others + negative, 6, "e2e") is None
    assert compare.not_comparable(others + negative, 6, "e2e", "local") == (
        "a CE loss increase is not positive over their shared L0 range")


def test_the_headline_says_its_spread_over_seeds():
    """Two seeds: the pooled ratio, then each seed's own (the comparison within one seed's
    runs); one seed: nothing more."""
    from jobs.report.compare import Point, headline

    def pt(setting, l0, ce, seed):
        return Point(f"{setting}{l0}{seed}", 2, setting, 1.0, l0, 0, 0, ce, 0, seed=seed)

    pts = [pt("local", 10, 1.0, 0), pt("local", 40, 0.5, 0), pt("e2e", 10, 0.8, 0),
           pt("e2e", 40, 0.4, 0), pt("local", 10, 1.0, 1), pt("local", 40, 0.5, 1),
           pt("e2e", 10, 0.5, 1), pt("e2e", 40, 0.25, 1)]
    (line,) = headline(pts, {2: ["local", "e2e"]})
    assert "(per seed: s0 80%, s1 50%)" in line, line
    (line,) = headline(pts[:4], {2: ["local", "e2e"]})
    assert "per seed" not in line and "80% of local's" in line


def test_every_curve_has_its_own_colour_in_every_plot(tmp_path, monkeypatch):
    """The evaluations' figure drew the fine-tune curves in local's colour (a setting without
    a colour of its own fell back to matplotlib's first, local's blue); each curve now has the
    colour the Pareto plots give it, and a layer an evaluation skipped says so."""
    from matplotlib.colors import to_hex

    from jobs.report import evals, plots

    curves = ["local", "e2e", "ft-karvonen-lr0.1-25.3%"]
    points = [Point(f"L{layer}-{s}-{i}", layer, s, 1.0, 10.0 * (i + 1), 1, 0, 0.1, 1)
              for layer in (6, 12) for s in curves for i in range(2)]
    ev = {p.cell_id: {"absorption_fraction": 0.1} if p.layer == 12 else
          {"probing_sae_top_1_acc": 0.6} for p in points}  # absorption: layer 12 only
    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, path, dpi=100: figs.append(fig))
    evals.figure(points, ev, tmp_path)
    (fig,) = figs
    drawn = {ln.get_label(): to_hex(ln.get_color()) for ax in fig.axes for ln in ax.get_lines()
             if not ln.get_label().startswith("_")}
    want = plots.curve_colors(set(curves))
    assert drawn == {c: to_hex(want[c]) for c in curves} and len(set(drawn.values())) == 3
    titles = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in fig.axes}
    assert titles["layer 6: absorption_fraction"] == ["not evaluated"]
    assert titles["layer 12: absorption_fraction"] == []
