"""The evaluation step (issue 45, item 1), submitted with the smoke grid (`evals=[...]`: a
local job after the analysis; tests/test_slurm.py runs it in SLURM): every dictionary (local,
e2e, e2e_ds, ksvd) gets SAEBench's core and sae-probes' sparse probing as SAEBench writes
them, core agrees with the paper's metrics of the same cell, a rerun skips what is done, and
bad input is one line before anything is written."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAELENS_PY, need

from jobs.report.results import read_grid

REPO = Path(__file__).resolve().parent.parent
SMALL = ["datasets=[117_us_state_FL,130_temp_cat_Frequency]", "max_seq_len=64"]
CP = "evals=[core,probing]"


def _result(grid: Path, cell: str, eval_type: str) -> dict:
    """A cell's result file, where SAEBench's layout puts it."""
    return json.loads((grid / "results" / "evals" / eval_type / f"{cell}_eval_results.json")
                      .read_text())


def _run(*args):
    return subprocess.run([sys.executable, "jobs/evaluate.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def root(smoke_root, tmp_path_factory):
    from e2e.evals.probing import wheel_path

    try:
        wheel_path()
    except Exception as e:
        pytest.fail(str(e))  # make install downloads it: a missing wheel is a broken install
    out = tmp_path_factory.mktemp("evals-root")
    shutil.copytree(smoke_root / "smoke", out / "smoke",
                    ignore=lambda d, names: [n for n in names if not n.startswith("_pretrain")
                                             and d == str(smoke_root / "smoke")])
    r = subprocess.run([sys.executable, "jobs/submit.py", "grid=smoke", f"root={out}",
                        "executor=local", "wait=true", "pack=3", "evals=[core,probing]",
                        *[f"evals.{a}" for a in SMALL]], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "then: evaluation job (after the analysis)" in r.stdout
    return out


def test_every_dictionary_gets_both_evaluations_as_saebench_writes_them(root):
    r = _run("grid=smoke", f"root={root}", CP, *SMALL)  # the submitted step did them all
    assert r.returncode == 0 and "4 dictionaries, 0 evaluations to run" in r.stdout, r.stderr
    grid = root / "smoke"
    cells = sorted(d.name for d in grid.iterdir() if d.name.startswith("L"))
    evals = {c.id: c.eval for c in read_grid(grid)}  # the paper's metrics, as collected
    assert {c.split("-")[1] for c in cells} == {"local", "e2e", "e2e_ds", "ksvd"}
    for cell in cells:
        core, probe = (_result(grid, cell, t) for t in ("core", "sparse_probing_sae_probes"))
        assert core["eval_type_id"] == "core" and probe["eval_type_id"] == (
            "sparse_probing_sae_probes")
        assert core["sae_cfg_dict"]["hook_name"] == "blocks.1.hook_resid_pre"
        m = core["eval_result_metrics"]
        # the same batches and positions as the cell's own evaluation (every batch the same
        # size here: token-weighted means equal batch means)
        own = evals[cell]
        assert m["sparsity"]["l0"] == pytest.approx(own["l0"], rel=1e-4)
        perf = m["model_performance_preservation"]
        assert perf["ce_loss_with_sae"] - perf["ce_loss_without_sae"] == pytest.approx(
            own["ce_loss_increase"], rel=1e-3, abs=1e-5)
        assert len(core["eval_result_details"]) == core["sae_cfg_dict"]["d_sae"]
        sae = probe["eval_result_metrics"]["sae"]
        assert set(sae) == {f"sae_top_{k}_test_{n}" for k in (1, 2, 5)
                            for n in ("accuracy", "auc", "f1")}
        assert all(0 <= v <= 1 for v in sae.values())
        assert [d["dataset_name"] for d in probe["eval_result_details"]] == [
            "117_us_state_FL", "130_temp_cat_Frequency"]
        assert 0.4 < probe["eval_result_metrics"]["llm"]["llm_test_accuracy"] <= 1
    assert len(list((root / "_evals_cache").glob("*.pt"))) == 2  # one per dataset and layer
    # where people look: summary.csv's columns, tables.md's section, the figure
    import csv

    rows = {r["cell_id"]: r for r in csv.DictReader(open(grid / "results" / "summary.csv"))}
    for cell in cells:
        core = _result(grid, cell, "core")
        assert float(rows[cell]["saebench_ce_loss_score"]) == pytest.approx(
            core["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"])
        assert 0 <= float(rows[cell]["probing_sae_top_1_acc"]) <= 1
    md = (grid / "results" / "tables.md").read_text()
    assert "## SAEBench's core, sparse probing and absorption" in md and all(c in md for c in cells)
    assert (grid / "results" / "evals_vs_l0.png").stat().st_size > 10_000


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver (tests/setup-chromium.sh)")
def test_saebench_s_own_graphing_finds_the_files_and_keys_them_by_cell(root):
    """SAEBench 0.6.0's `find_eval_results_files`, `get_core_results` and `get_eval_results`,
    in SAELens's environment, on the step's folder."""
    need(SAELENS_PY)
    code = ("import json, sys\n"
            "from sae_bench.sae_bench_utils import graphing_utils as g\n"
            "files = g.find_eval_results_files([sys.argv[1]])\n"
            "core = g.get_core_results([f for f in files if '/core/' in f])\n"
            "probe = g.get_eval_results([f for f in files if 'sparse_probing' in f])\n"
            "print(json.dumps({'core': core, 'probe': sorted(probe)}))")
    r = subprocess.run([str(SAELENS_PY), "-c", code, str(root / "smoke" / "results" / "evals")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    cells = sorted(d.name for d in (root / "smoke").iterdir() if d.name.startswith("L"))
    assert sorted(out["core"]) == cells == out["probe"]
    for cell in cells:
        assert out["core"][cell]["l0"] == _result(root / "smoke", cell, "core")[
            "eval_result_metrics"]["sparsity"]["l0"]


def test_a_moved_root_keeps_its_activations_cache(root, tmp_path):
    """The cache is keyed by the model's path under the root, not by where the root lies."""
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    shutil.rmtree(moved / "smoke" / "results" / "evals")
    r = _run("grid=smoke", f"root={moved}", CP, *SMALL)
    assert r.returncode == 0 and "8 evaluations to run" in r.stdout, r.stdout + r.stderr
    assert "activations at layer" not in r.stderr  # every dataset's came from the cache


def test_one_command_evaluates_a_foreign_saelens_folder(root, tmp_path):
    """`sae=<folder>`: a cell's SAE copied out of the grid gets the grid's own numbers; a hook
    the evaluations cannot read, core, or a folder without an SAE is one line."""
    cell = sorted((root / "smoke").glob("L1-local-*"))[0]
    sae = tmp_path / "their-sae"
    shutil.copytree(cell / "sae", sae)
    r = _run(f"sae={sae}", f"root={tmp_path}", "evals=[probing]", *SMALL)
    assert r.returncode == 0 and "1 dictionaries, 1 evaluations to run" in r.stdout, r.stderr
    theirs = json.loads((tmp_path / "foreign" / "evals" / "sparse_probing_sae_probes" /
                         "their-sae_eval_results.json").read_text())
    ours = _result(root / "smoke", cell.name, "sparse_probing_sae_probes")
    assert theirs["eval_result_metrics"] == ours["eval_result_metrics"]
    cfg = json.loads((sae / "cfg.json").read_text())
    (sae / "cfg.json").write_text(json.dumps({**cfg, "hook_name": "blocks.1.hook_mlp_out"}))
    for args, line in ((["evals=[probing]"], "hook 'blocks.1.hook_mlp_out': the evaluations"),
                       (["evals=[core]"], "on a foreign SAE run evals=[probing,absorption]"),
                       (["evals=[probing]", f"sae={tmp_path}"], "not a SAELens folder")):
        r = _run(*([] if any(a.startswith("sae=") for a in args) else [f"sae={sae}"]), *args,
                 f"root={tmp_path}")
        assert r.returncode == 1 and line in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_scores_are_columns_of_the_browser(root):
    """The dictionary table has the evaluations' columns, each cell's value shown; the index
    shows the figure; no console error."""
    from selenium.webdriver.common.by import By

    from benchmarks.bench_browser import chromium, console_errors, open_page

    folder = root / "smoke" / "results" / "browser"
    ev = json.loads(sorted((root / "smoke" / "results" / "evals" / "core").iterdir())[0]
                    .read_text())
    score = ev["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"]
    driver = chromium()
    try:
        open_page(driver, f"{folder.as_uri()}/index.html", "tbody tr")
        heads = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "th")]
        assert {"SAEBench CE score", "probing top-1", "absorption"} <= set(heads)
        col = heads.index("SAEBench CE score")
        shown = [r.find_elements(By.CSS_SELECTOR, "td")[col].text
                 for r in driver.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert sum(t not in ("", "–") for t in shown) == 4
        assert any(abs(float(t) - score) <= 0.01 * max(1, abs(score)) for t in shown
                   if t not in ("", "–"))
        assert "evals_vs_l0.png" in driver.page_source
        assert console_errors(driver) == []
    finally:
        driver.quit()


def test_a_rerun_skips_what_is_done_and_redoes_what_is_missing(root):
    folder = root / "smoke" / "results" / "evals"
    next((folder / "core").iterdir()).unlink()
    r = _run("grid=smoke", f"root={root}", CP, *SMALL)
    assert r.returncode == 0 and "1 evaluations to run" in r.stdout, r.stdout + r.stderr
    from safetensors.torch import load_file, save_file

    weights = root / "smoke" / "L1-local-lam1-3bfde3" / "sae" / "sae_weights.safetensors"
    if not weights.exists():  # the cell ids of the smoke grid are pinned; find it anyway
        weights = next((root / "smoke").glob("L1-local-*/sae/sae_weights.safetensors"))
    t = load_file(str(weights))
    t["b_dec"] = t["b_dec"] + 0.01  # a retrained dictionary: evaluated again
    save_file(t, str(weights))
    r = _run("grid=smoke", f"root={root}", CP, *SMALL)
    assert r.returncode == 0 and "2 evaluations to run" in r.stdout, r.stdout + r.stderr
    r = _run("grid=smoke", f"root={root}", CP, *SMALL, "layers=[2]")
    assert r.returncode == 1 and "no dictionary on a model at layer 2 (its layers: [1])" in (
        r.stderr), r.stdout + r.stderr
    # prompts past the smoke LM's 64 positions are cut to them (sciq's run to 1,024 tokens)
    r = _run("grid=smoke", f"root={root}", "evals=[probing]", "datasets=[36_sciq_tf]",
             "layers=[1]")
    assert r.returncode == 0 and "4 evaluations to run" in r.stdout, r.stdout + r.stderr
    assert "36_sciq_tf's activations at layer 1 (5,000 prompts" in r.stderr
    r = _run("grid=smoke", f"root={root}", CP, *SMALL, "ks=[1,3]")  # other options: probing again
    assert r.returncode == 0 and "4 evaluations to run" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("args,line", [
    (["evals=[core,absorb]"],
     "evals='absorb' is not an evaluation: choose among core, probing, absorption"),
    (["datasets=[nope]"], "'nope' is not one of sae-probes 0.4.2's binary datasets"),
    (["datasets=[117_us_state_FL]", "max_rows=500"],
     "max_rows=500: dataset 117_us_state_FL's first 500 rows cannot hold its 900"),
    (["grid=nosuch"], "grid='nosuch'"),
    (["layers=[1]"], "grid smoke has no dictionary on a model (synthetic and MFR"),
    (["evals=[core,core]"], "names an evaluation twice"),
    (["min_probe_f1=2"], "min_probe_f1=2.0 must be in [0, 1]"),
    (["seed=-1"], "seed=-1 must be in [0, 2**32)"),
    (["device=tpu"], "device='tpu' is invalid"),
    (["colour=red"], "unknown key 'colour'"),
])
def test_bad_input_is_one_line_before_anything_is_written(smoke_root, tmp_path, args, line):
    grid = [] if any(a.startswith("grid=") for a in args) else ["grid=smoke"]
    args = args if any(a.startswith("evals=") for a in args) else [CP, *args]
    r = _run(*grid, f"root={smoke_root}", *args)
    assert r.returncode == 1 and line in r.stderr, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (smoke_root / "smoke" / "results" / "evals").exists()


def test_absorption_on_a_model_whose_context_cannot_hold_its_prompts_is_one_line(root):
    """The smoke LM's 64 positions cannot hold SAEBench's ten-example prompts: one line before
    any forward, nothing written (the evaluation itself: tests/test_evals_absorption.py)."""
    r = _run("grid=smoke", f"root={root}", "evals=[absorption]", "words=300")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert "past the model's context of 64" in r.stderr and "Traceback" not in r.stderr
    assert not (root / "smoke" / "results" / "evals" / "absorption_first_letter").exists()


def test_submit_checks_the_step_and_writes_its_plain_sbatch_job(tmp_path):
    def submit(*args):
        return subprocess.run([sys.executable, "jobs/submit.py", "grid=smoke",
                               f"root={tmp_path}", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=300)

    r = submit("evals=[core,probing]", "evals.datasets=[117_us_state_FL]", "evals.max_rows=500")
    assert r.returncode == 1 and "max_rows=500: dataset 117_us_state_FL's first 500" in r.stderr
    assert not (tmp_path / "smoke").exists()  # nothing written
    r = submit("evals.max_rows=10")
    assert r.returncode == 1 and "evals.max_rows= needs evals=[...]" in r.stderr
    assert "core, probing, absorption" in r.stderr
    r = submit("evals=[core]", "evals.layers=[3]", "dry_run=true")
    assert r.returncode == 1 and "the grid has no dictionary on a model at layer 3" in r.stderr
    r = submit("evals=[core,absorption]", "dry_run=true")
    assert r.returncode == 1 and "need a context of 128 tokens; the model's is 64" in r.stderr
    r = subprocess.run([sys.executable, "jobs/submit.py", "grid=tiny", f"root={tmp_path}",
                        "dry_run=true", "evals=[absorption,core]", "evals.words=2000"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "SAEBench's core, SAEBench's absorption (2,000 words) of every" in r.stdout, r.stderr
    # an evaluation job on a GPU runs every dataset and word by default, on CPUs the subsets
    for gpu, line in ((0, "probing on 16 dataset(s) of sae-probes (at most 5,000 rows each), "
                          "SAEBench's absorption (8,000 words)"),
                      (1, "probing on 113 dataset(s) of sae-probes (at most 5,000 rows each), "
                          "SAEBench's absorption (all words)")):
        r = subprocess.run([sys.executable, "jobs/submit.py", "grid=tiny", f"root={tmp_path}",
                            "dry_run=true", "executor=slurm", f"gpus_per_cell={gpu}",
                            "evals=[probing,absorption]"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
        assert line in r.stdout, r.stdout + r.stderr
    r = submit("executor=slurm", "submit=false", "evals=[core]")
    assert r.returncode == 0, r.stderr
    job = next(x for x in r.stdout.splitlines() if "smoke-evals" in x)
    assert "--dependency=afterany:$ana" in job and "step=evals" in job
    assert json.loads((tmp_path / "smoke" / "evals.json").read_text())["names"] == ["core"]
