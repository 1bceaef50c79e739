import json
import os
import subprocess
import sys
from ctypes.util import find_library
from dataclasses import replace
from pathlib import Path

import pytest

from e2e.config import ConfigError
from e2e.io import cell_paths
from jobs.plan.make import make_plan
from jobs.plan.options import parse_overrides

REPO = Path(__file__).resolve().parent.parent


def _submit(*args, env_extra=None):
    env = {**os.environ, "PATH": os.environ["PATH"], **(env_extra or {})}
    return subprocess.run([sys.executable, "jobs/submit.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_overrides_are_typed_and_unknown_keys_list_valid_ones():
    opts, axes, cfg = parse_overrides(["grid=paper", "layers=[6]", "sparsity_coeffs=[1,2.5]",
                                       "optim.n_samples=1e6".replace("1e6", "1000000"),
                                       "optim.lr=1e-3", "dry_run=true", "data.eval_split=none"])
    assert opts.grid == "paper" and opts.dry_run is True
    assert axes.layers == (6,) and axes.sparsity_coeffs == (1.0, 2.5)
    assert cfg == {"optim.n_samples": 1_000_000, "optim.lr": 1e-3, "data.eval_split": None}
    with pytest.raises(ConfigError, match=r"unknown key 'lr'; valid keys: .*optim.lr"):
        parse_overrides(["lr=1e-3"])
    with pytest.raises(ConfigError, match=r"optim.n_samples='1e6' is invalid: must be int"):
        parse_overrides(["optim.n_samples=1e6"])
    with pytest.raises(ConfigError, match=r"executor='pbs' is invalid: must be one of"):
        parse_overrides(["executor=pbs"])


def test_bad_input_fails_before_anything_is_written(tmp_path):
    for args, msg in ((["grid=nope"], "grid='nope' is invalid: must be one of"),
                      (["grid=smoke", "optim.lr=7"], "optim.lr=7.0 is invalid"),
                      (["grid=smoke", "settings=[e2e+ds]"], "settings='e2e+ds' is invalid"),
                      (["grid=smoke", "typo=1"], "unknown key 'typo'"),
                      (["grid=tiny", "layers=[9]"], "layer=9 is invalid: the model has 4 layers"),
                      (["grid=smoke", "layers=[7]"], "layer=7 is invalid: the model has 3 layers"),
                      (["grid=smoke", "pack=-1"], "pack=-1 is invalid"),
                      # the dictionary size is known before submission (synthetic data: d)
                      (["grid=synthetic", "sae.k=100000"],
                       "sae.k=100000 is invalid: must be <= the dictionary size 512")):
        r = _submit(*args, f"root={tmp_path}")
        assert r.returncode != 0 and msg in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line, no traceback
    assert list(tmp_path.iterdir()) == []
    for args, msg in ((["grid=smoke", f"root={tmp_path}/a b"], "' ' cannot pass through"),
                      (["grid=smoke", f"root={tmp_path}/a'b$"], "\"$'\" cannot pass through"),
                      (["grid=smoke", f"root={tmp_path}/~a"], "'~' cannot pass through"),
                      (["grid=smoke", f"root={tmp_path}", "container=podman", "image=my img"],
                       "image=my img is invalid: ' '")):
        r = _submit(*args)
        assert r.returncode != 0 and msg in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(tmp_path.iterdir()) == []
    a_file = tmp_path / "f"
    a_file.write_text("")
    for root in (a_file, a_file / "below"):
        r = _submit("grid=smoke", f"root={root}")
        assert r.returncode != 0 and r.stderr.strip() == (
            f"error: root={root} is invalid: {a_file} is a file, not a folder"), r.stderr


def test_paper_dry_run_lists_cells_resources_and_apptainer_command(tmp_path):
    r = _submit("grid=paper", "dry_run=true", "executor=slurm", f"root={tmp_path}",
                env_extra={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # the tables' λ, the published sweep values, the seed-1 trio of layer 6 (68 SAE cells),
    # and 15 DB-KSVD cells (our estimate of 1 GPU-hour each)
    assert "grid paper: 83 cells" in out
    assert "estimated 599 GPU-hours for the 83 cells" in out
    # sized by jobs.plan.analysis_cost: ≈ 1 h of clustering per 46,080-element trio dictionary,
    # and the feature browser on a GPU (its matching pursuit at 46,080 atoms)
    assert ("analysis job (after the collector; 1 GPU, 4 CPUs, --time=1324 --mem=26G: geometry, "
            "downstream reconstruction, multi-dimensional features, and the feature browser: "
            "at most 625,664 feature pages, about 2,941 MB, 78 min)") in out
    for layer in (2, 6, 10):
        for nnz in (16, 32, 64, 128, 256):
            assert f"L{layer}-ksvd-nnz{nnz}-" in out
    for lam in (0.08, 0.2, 0.8, 2):
        assert f"L6-e2e-lam{lam:g}-" in out
    for setting, lam in (("local", 4), ("e2e", 3), ("e2e_ds", 50)):
        assert f"L6-{setting}-lam{lam}-s1-" in out
    for layer in (2, 6, 10):
        for setting, lams in (("local", (0.8, 4, 6, 10)), ("e2e", (0.5, 1.5, 3))):
            for lam in lams:
                assert f"L{layer}-{setting}-lam{lam:g}-" in out
    for lam in (10, 35, 50):
        assert f"L6-e2e_ds-lam{lam}-" in out
    assert "L10-e2e_ds-lam1.75-" in out
    assert "--gres=gpu:1" in out and "--time=960" in out
    assert "apptainer exec --nv" in out and "--bind /etc/slurm" in out
    assert f" {REPO}/containers/e2e-sae-hpc.sif python" in out  # the grid's image, from the repo
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


def test_changed_config_is_refused_naming_the_fields(smoke_root):
    plan = make_plan(["grid=smoke", f"root={smoke_root}", "layers=[0]"])
    cell = plan.cells[0]
    paths = cell_paths(cell.dir)
    paths.root.mkdir(parents=True)
    d = json.loads(cell.cfg.to_json())
    d["optim"]["lr"] = 0.123
    paths.config.write_text(json.dumps(d))
    try:
        with pytest.raises(ConfigError, match=r"different config: optim.lr: 0.123 -> 0.0005"):
            make_plan(["grid=smoke", f"root={smoke_root}", "layers=[0]"])
    finally:
        paths.config.unlink()
        paths.root.rmdir()


def test_layer_outside_a_local_model_is_refused_before_anything_is_written(smoke_root, tmp_path):
    model = smoke_root / "smoke" / next((smoke_root / "smoke").glob("_pretrain-*")).name / "model"
    with pytest.raises(ConfigError, match="layer=2 is invalid for e2e_ds: no later resid_pre"):
        make_plan(["grid=paper", f"root={tmp_path}", f"model.name_or_path={model}",
                   "dry_run=true"])
    assert list(tmp_path.iterdir()) == []


def test_cells_that_differ_only_in_loss_are_packed_and_the_manifest_names_packs(smoke_root):
    plan = make_plan(["grid=smoke", f"root={smoke_root}", "pack=2", "dry_run=true",
                      "sparsity_coeffs=[1,2]"])
    # 6 SAE cells of one layer and seed in packs of 2; the ksvd cells (max_nnz 1, 2) alone
    assert [len(p) for p in plan.packs] == [2, 2, 2, 1, 1]
    assert all(len({c.cfg.layer for c in p}) == 1 for p in plan.packs)
    plan = make_plan(["grid=smoke", f"root={smoke_root}", "pack=4", "dry_run=true",
                      "layers=[0,1]", "settings=[local,e2e]"])
    assert sorted(len(p) for p in plan.packs) == [2, 2]  # never across layers
    assert {p[0].cfg.layer for p in plan.packs} == {0, 1}


def test_paper_tables_grid_has_only_the_tables_cells_and_seeds_cross_every_cell(tmp_path):
    plan = make_plan(["grid=paper-tables", f"root={tmp_path}", "dry_run=true", "layers=[6]",
                      "seeds=[0,1]"])
    assert len(plan.cells) == 2 * (4 + 3 + 3)
    assert {c.cfg.seed for c in plan.cells} == {0, 1}
    plan = make_plan(["grid=paper", f"root={tmp_path}", "dry_run=true", "layers=[2]"])
    assert all(c.cfg.seed == 0 for c in plan.cells)  # the seed-1 extras are layer 6's


def test_a_settings_own_lambdas_override_the_common_list_and_the_grid(tmp_path):
    plan = make_plan(["grid=paper", f"root={tmp_path}", "dry_run=true", "layers=[6]",
                      "sparsity_coeffs=[1,2]", "lambdas.e2e=[0.1,0.3,0.9]"])
    lams = {s: [c.cfg.loss.sparsity_coeff for c in plan.cells if c.cfg.loss.setting == s]
            for s in ("local", "e2e", "e2e_ds")}
    assert lams == {"local": [1.0, 2.0], "e2e": [0.1, 0.3, 0.9], "e2e_ds": [1.0, 2.0]}
    with pytest.raises(ConfigError, match=r"unknown key 'lambdas.topk'"):
        parse_overrides(["lambdas.topk=[1]"])


def test_unreachable_model_fails_before_submission(tmp_path):
    r = _submit("grid=paper", f"root={tmp_path}", "executor=local", "container=none",
                "model.name_or_path=no-such-org/no-such-model",
                env_extra={"HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0
    assert "model 'no-such-org/no-such-model' cannot be loaded with HF_HUB_OFFLINE=1" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_smoke_grid_runs_locally_then_a_second_run_does_no_work_wherever_the_root_moved(
        tmp_path):
    root = tmp_path / "runs"
    r = _submit("grid=smoke", f"root={root}", "executor=local", "pack=3")
    assert r.returncode == 0, r.stdout + r.stderr
    grid = root / "smoke"
    cells = [d for d in grid.iterdir() if d.name.startswith("L")]
    assert len(cells) == 4 and all((d / "DONE").exists() for d in cells)
    assert all("in a pack of 3" in (d / "train.log").read_text() for d in cells
               if "-ksvd-" not in d.name)
    # a plain job preloads tcmalloc where the machine has it (CI's `make install` puts it there)
    tcmalloc = bool(find_library("tcmalloc_minimal")) and not os.environ.get("LD_PRELOAD")
    assert tcmalloc or os.environ.get("CI") != "true", "CI installs libtcmalloc-minimal4"
    malloc = "tcmalloc malloc" if tcmalloc else "glibc malloc"
    assert all(malloc in (d / "train.log").read_text() for d in cells)
    assert (grid / "manifest.txt").read_text().count("\n") == 2  # the pack, the ksvd cell
    results = grid / "results"
    for f in ("summary.csv", "tables.md", "tables.tex", "results.h5", "pareto_l0.png"):
        assert (results / f).exists(), f
    stamps = {f: f.stat().st_mtime_ns for f in grid.rglob("*") if f.is_file()}
    r2 = _submit("grid=smoke", f"root={root}", "executor=local", "pack=3")
    assert r2.returncode == 0 and "nothing to do" in r2.stdout
    assert stamps == {f: f.stat().st_mtime_ns for f in grid.rglob("*") if f.is_file()}
    # the shared root moved (`mv`, another mount point): its cells are the same cells, the
    # model and token rows they name are read where they are now (the old place is gone)
    moved = root.rename(tmp_path / "moved")
    r3 = _submit("grid=smoke", f"root={moved}", "executor=local", "pack=3")
    assert r3.returncode == 0 and "4 cells, 0 to run (4 done)" in r3.stdout, r3.stdout + r3.stderr
    assert sorted(d.name for d in (moved / "smoke").glob("L*")) == sorted(d.name for d in cells)
    r4 = subprocess.run([sys.executable, "jobs/analyze.py", "grid=smoke", f"root={moved}",
                         "multidim=false"], cwd=REPO, capture_output=True, text=True)
    assert r4.returncode == 0 and "feature browser:" in r4.stdout, r4.stdout + r4.stderr
    summary = (moved / "smoke" / "results" / "summary.csv").read_text()
    assert summary.count("\n") == 5, summary  # the header and 4 cells, no duplicates
    # an analysis that cannot build the browser (its model is gone) writes the rest and fails
    next((moved / "smoke").glob("_pretrain-*/model/config.json")).unlink()
    r5 = subprocess.run(r4.args, cwd=REPO, capture_output=True, text=True)
    assert r5.returncode == 1 and "Traceback" not in r5.stderr, r5.stderr
    assert r5.stderr.strip().splitlines()[-1].startswith("error: feature browser not built: ")
    r6 = subprocess.run(r4.args[:-1], cwd=REPO, capture_output=True, text=True)  # multidim on
    last = r6.stderr.strip().splitlines()[-1]
    assert r6.returncode == 1 and "Traceback" not in r6.stderr, r6.stderr
    assert last.startswith("error: multi-dimensional features not computed: ") and (
        "; feature browser not built: " in last)


def _started_cells(grid_dir: Path, timeout_s: float = 300) -> list[Path]:
    """The cell folders of a run in the background once one has started training (its log
    says so, or it has a checkpoint); [] if none did within `timeout_s`."""
    import time

    deadline, cells = time.time() + timeout_s, []
    while not cells and time.time() < deadline:
        cells = [d for d in grid_dir.glob("L*") if (d / "checkpoint.pt").exists()
                 or "start" in ((d / "train.log").read_text() if (d / "train.log").exists()
                                else "")]
        time.sleep(0.5)
    return cells


def test_sigterm_of_a_local_run_stops_its_cell_so_a_rerun_is_not_refused(tmp_path):
    import signal
    import time

    from e2e.train.lock import CellBusyError, cell_lock

    args = [sys.executable, "jobs/submit.py", "grid=smoke", f"root={tmp_path}",
            "executor=local", "settings=[e2e]", "optim.n_samples=40000"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    (cell,) = _started_cells(tmp_path / "smoke")
    time.sleep(3)  # training
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while True:  # the cell's process is gone: its lock is free
        try:
            with cell_lock(cell):
                break
        except CellBusyError:
            assert time.time() < deadline, "the cell still trains after its run was killed"
            time.sleep(0.5)
    assert not (cell / "DONE").exists()


def test_a_current_model_grid_dry_run_prints_gpu_hours_and_memory_per_cell(tmp_path):
    """grid=pythia-410m (not downloaded here): its sizes from the grid, its layers checked,
    its GPU-hours and memory per cell printed; the memory model gives the one measurement it
    is calibrated on (GPT-2 e2e, layer 6: 23 GiB on an H200) less the logits the fused KL no
    longer holds."""
    from dataclasses import replace

    from e2e.config import CellConfig
    from jobs.plan.cell_memory import cell_memory_gib
    from jobs.plan.grids import PAPER_TABLES

    r = _submit("grid=pythia-410m", "dry_run=true", f"root={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert "estimated 762 GPU-hours for the 24 cells" in r.stdout
    assert "at most (a pack holds more): local 10 GiB, e2e 46 GiB" in r.stdout
    r = _submit("grid=pythia-410m", "dry_run=true", "layers=[24]", f"root={tmp_path}")
    assert "layer=24 is invalid: the model has 24 layers" in r.stderr
    gpt2 = cell_memory_gib(replace(CellConfig(), layer=6), PAPER_TABLES.model_sizes)
    assert gpt2 == pytest.approx(13.5, rel=0.01)  # 23 measured before the KL was fused
    assert not list(tmp_path.iterdir())


AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # the other CPU kind


def test_no_grid_pins_a_dtype_and_emulated_bf16_is_said_in_the_plan(tmp_path):
    """Every grid leaves dtype to auto (bf16 where the chip has it, else fp32); on a CPU that
    would emulate bf16 (the AVX2 kind, emulated here), grid=demo plans its fp32-sized twin and
    a user's dtype=bfloat16 gets one line with the measured factor, then runs as asked."""
    import torch

    from e2e.kernels.chip import native_bf16
    from jobs.plan.grids import GRIDS

    for grid in GRIDS.values():
        assert grid.base.dtype == "auto", grid.name
        assert getattr(grid.pretrain, "dtype", "auto") in ("auto", "float32"), grid.name
    root = tmp_path / "root"
    r = _submit("grid=demo", f"root={root}", "dry_run=true", env_extra=AVX2)
    assert r.returncode == 0, r.stderr
    assert "grid=demo-fp32 instead" in r.stdout and "grid demo-fp32: 2 cells" in r.stdout
    assert "dtype=bfloat16" not in r.stdout
    r = _submit("grid=smoke", f"root={root}", "dry_run=true", "dtype=bfloat16",
                env_extra=AVX2)
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if "dtype=bfloat16" in ln]
    assert "emulated" in line and "(3.2x)" in line and "AVX2 kernels" in line, line
    if native_bf16(torch.device("cpu")):  # this chip (unless emulating the other): neither
        r = _submit("grid=demo", f"root={root}", "dry_run=true", "dtype=bfloat16")
        assert "grid demo: 3 cells" in r.stdout and "emulated" not in r.stdout, r.stdout
    assert not root.exists()


def test_every_named_grid_keeps_its_cell_ids(monkeypatch):
    """A cell's id names its folder on the shared root: a changed id orphans finished work. The
    ids of every named grid's dry run (cells and fine-tune children; a dry run writes nothing)
    are pinned in tests/data/cell_ids.json. They do not depend on the root: paths inside it (a
    small LM's) are hashed relative to it."""
    from jobs.plan import make
    from jobs.plan.grids import GRIDS

    monkeypatch.setattr(make, "native_bf16", lambda device: True)  # grid=demo as bf16 chips plan it
    want = json.loads((REPO / "tests" / "data" / "cell_ids.json").read_text())
    for root in ("/shared/e2e", "/mnt/elsewhere/runs"):
        got = {}
        for name in sorted(GRIDS):
            plan = make.make_plan([f"grid={name}", f"root={root}", "dry_run=true",
                                   "executor=local"])
            got[name] = sorted(c.id for c in plan.cells + plan.children)
        assert got == want, root


# Grids whose cells changed after the absolute ids were pinned: the real-LM grids leave out
# special tokens since issue 44 (their folders of before are other experiments).
EXCLUDING_SINCE = ("demo", "demo-fp32", "smollm2", "pythia-410m")


def test_a_root_written_with_absolute_ids_keeps_its_cells_where_it_moved(tmp_path, monkeypatch):
    """Folders written before 2026-12-07 under root=/shared/e2e (their ids, pinned in
    tests/data/cell_ids_absolute.json, hashed the root's absolute paths), then moved: each named
    grid's plan finds every cell finished under its old name, and writing the plan stores the
    config's in-root paths relative to the folder, read back under the new root."""
    from e2e.io import read_cell_config
    from jobs.plan import make
    from jobs.plan.grid import cell_id
    from jobs.plan.grids import GRIDS
    from jobs.run.manifest import write_configs

    monkeypatch.setattr(make, "native_bf16", lambda device: True)
    old_ids = json.loads((REPO / "tests" / "data" / "cell_ids_absolute.json").read_text())
    new_ids = json.loads((REPO / "tests" / "data" / "cell_ids.json").read_text())
    for name in sorted(GRIDS):
        args = [f"grid={name}", "dry_run=true", "executor=local"]
        old = make.make_plan([*args, "root=/shared/e2e"])
        old_id = {c.id: cell_id(c.cfg) for c in old.cells}  # as the code before 2026-12-07 had
        for c in old.cells + old.children:                  # them: absolute paths in the hash
            cfg = c.cfg if not c.cfg.init.from_cell else replace(
                c.cfg, init=replace(c.cfg.init, from_cell=old_id[c.cfg.init.from_cell]))
            folder = tmp_path / name / cell_id(cfg)
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(cfg.to_json())
            (folder / "DONE").touch()
        plan = make.make_plan([*args, f"root={tmp_path}"])
        cells = plan.cells + plan.children
        if name not in EXCLUDING_SINCE:
            assert sorted(c.id for c in cells) == old_ids[name], name
        in_root = sorted(c.id for c in cells) != new_ids[name]  # its cells read its own LM
        assert all(c.status == "done" and c.rewrite == in_root for c in cells), name
        assert ("found by their config" in " ".join(plan.notes)) == in_root
        assert not [c for c in cells if "/shared/e2e" in c.cfg.model.name_or_path
                    + c.cfg.data.dataset]
        write_configs(plan)
        for c in cells:
            assert "/shared/e2e" not in (c.dir / "config.json").read_text()
            assert read_cell_config(c.dir) == c.cfg
        again = make.make_plan([*args, f"root={tmp_path}"])  # found, nothing left to rewrite
        assert [(c.id, c.status) for c in again.cells] == [(c.id, "done") for c in plan.cells]
        assert not any(c.rewrite for c in again.cells + again.children)
        assert "found by their config" not in " ".join(again.notes)


def test_a_second_submission_into_one_root_skips_the_cells_the_first_trains(tmp_path):
    """Issue 43: the second run ended rc 1, "1 task(s) failed", with a CellBusyError traceback
    for a cell the first run finished. Now it skips the busy cells, one line each (both
    members of the pack), exits 0, and leaves the tables to the first run's collector."""
    import signal

    args = ["grid=smoke", f"root={tmp_path}", "executor=local", "settings=[e2e,e2e_ds]",
            "pack=2"]
    first = subprocess.Popen([sys.executable, "jobs/submit.py", *args, "optim.n_samples=40000"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cells = _started_cells(tmp_path / "smoke")
        assert cells, "the first run's cells never started"
        second = _submit(*args, "optim.n_samples=40000")
        assert second.returncode == 0, second.stdout + second.stderr
        skipped = [line for line in second.stdout.splitlines() if line.startswith("skipped")]
        assert len(skipped) == 2 and {d.name for d in cells} <= {
            Path(line.split()[1]).name for line in skipped}, second.stdout
        assert all("is being trained by another process" in line for line in skipped)
        assert "every cell to train is held by another run" in second.stdout
        assert not (tmp_path / "smoke" / "results").exists()  # the first run writes them
        assert "Traceback" not in second.stderr and "failed" not in second.stdout
        assert first.poll() is None, "the first run trains on"
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
