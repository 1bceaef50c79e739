"""Through a real SLURM (slurm/local-cluster.sh) and real podman containers built from the
project's Dockerfile: the smoke grid as one array, a preemption that resumes to identical
results, and the collector after the array. In CI (CI=true or E2E_REQUIRE_SLURM=1) these fail,
never skip, when the cluster or the image is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from e2e.io import cell_paths
from e2e.store import read_metrics
from e2e.train.lock import cell_lock
from jobs.run.cell import REQUEUE_LOCK_WAIT_S

REPO = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("E2E_IMAGE", "localhost/e2e-sae-hpc")
REQUIRED = os.environ.get("CI") == "true" or os.environ.get("E2E_REQUIRE_SLURM") == "1"


def _cluster_problem() -> str | None:
    if not shutil.which("sbatch"):
        return "sbatch is not installed"
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        return "the SLURM controller does not answer (bash slurm/local-cluster.sh up)"
    if not shutil.which("podman"):
        return "podman is not installed (bash containers/setup-podman.sh)"
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        return f"image {IMAGE} is missing (bash containers/make-base.sh)"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    problem = _cluster_problem()
    if problem and REQUIRED:
        pytest.fail(f"SLURM/container tests are required here but {problem}")
    if problem:
        pytest.skip(problem)


pytestmark = pytest.mark.slurm


def _submit(root: Path, *extra: str, wait: bool = True) -> subprocess.CompletedProcess:
    args = [sys.executable, "jobs/submit.py", "grid=smoke", f"root={root}", "executor=slurm",
            "container=podman", f"image={IMAGE}", "time=30", f"wait={str(wait).lower()}",
            *extra]
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _sacct(job: str) -> list[dict]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job, "--format",
                          "JobID,State,Start,End"], capture_output=True, text=True).stdout
    return [dict(zip(("id", "state", "start", "end"), line.split("|"), strict=True))
            for line in out.strip().splitlines()]


def _job_ids(stdout: str) -> dict[str, str]:
    ids = {}
    for line in stdout.splitlines():
        if line.startswith("cell array "):
            ids["array"] = line.split()[2].rstrip(":")
        elif line.startswith("fine-tune array "):
            ids["finetune"] = line.split()[2]
        elif line.startswith("collector job "):
            ids["collector"] = line.split()[2]
        elif line.startswith("analysis job "):
            ids["analysis"] = line.split()[2]
        elif line.startswith("evaluation job "):
            ids["evals"] = line.split()[2]
    return ids


def test_smoke_grid_as_one_array_in_containers_then_collector(tmp_path):
    r = _submit(tmp_path, "evals=[core]")
    ids = _job_ids(r.stdout)
    tasks = _sacct(ids["array"])
    assert len(tasks) == 4 and all(t["state"] == "COMPLETED" for t in tasks), tasks
    (col,) = _sacct(ids["collector"])
    assert col["state"] == "COMPLETED"
    assert col["start"] >= max(t["end"] for t in tasks)  # afterany: after the whole array
    # its result is back when the function returns; SLURM marks the job done a moment later
    _wait_for(lambda: _sacct(ids["analysis"])[0]["state"] != "RUNNING", 120,
              "the analysis job to end in SLURM")
    (ana,) = _sacct(ids["analysis"])
    assert ana["state"] == "COMPLETED" and ana["start"] >= col["end"]
    grid = tmp_path / "smoke"
    assert all((d / "DONE").exists() for d in grid.glob("L*"))
    assert "## Geometry: within-SAE" in (grid / "results" / "tables.md").read_text()
    # the feature browser, built in the analysis job's container
    assert (grid / "results" / "browser" / "data" / "index.js").stat().st_size > 100
    for cell in grid.glob("L*"):  # inside the image: its python, and the tcmalloc it preloads
        assert "with /opt/venv/bin/python, tcmalloc malloc" in (cell / "train.log").read_text()
    # the evaluation job, after the analysis (issue 45): SAEBench's core of every dictionary
    _wait_for(lambda: _sacct(ids["evals"])[0]["state"] != "RUNNING", 120,
              "the evaluation job to end in SLURM")
    (ev,) = _sacct(ids["evals"])
    assert ev["state"] == "COMPLETED" and ev["start"] >= ana["end"]
    for cell in grid.glob("L*"):
        core = json.loads((grid / "results" / "evals" / "core" / f"{cell.name}_eval_results.json")
                          .read_text())
        assert core["eval_type_id"] == "core"


def test_finetune_array_task_i_waits_for_cell_task_i_then_the_collector(tmp_path):
    r = _submit(tmp_path, "lambdas.local=[1,2]", "finetune.settings=[e2e,e2e_mse]",
                "finetune.fractions=[0.5]")
    ids = _job_ids(r.stdout)
    assert f"(aftercorr:{ids['array']})" in r.stdout
    cells, kids = _sacct(ids["array"]), _sacct(ids["finetune"])
    assert len(kids) == 2 and all(t["state"] == "COMPLETED" for t in cells + kids), cells + kids
    for i in (0, 1):  # the two local cells are cell tasks 0 and 1, in grid order
        assert kids[i]["start"] >= cells[i]["end"]
    (col,) = _sacct(ids["collector"])
    assert col["start"] >= max(t["end"] for t in kids)
    grid = tmp_path / "smoke"
    children = list(grid.glob("L1-ft*"))
    assert len(children) == 4 and all((d / "DONE").exists() for d in children)
    assert "## Fine-tuned from local cells" in (grid / "results" / "tables.md").read_text()
    assert "ft-e2e_mse-lr0.1-50%" in (grid / "results" / "headline.txt").read_text()


def _wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _interrupted_cell_ends_identical(tmp_path, interrupt, n_samples: int = 4800) -> None:
    """Runs the smoke grid's e2e cell straight and interrupted (`interrupt(job id)`, once the
    cell is in its training loop); asserts the interrupted one resumed and ended bit-identical."""
    long = ("settings=[e2e]", f"optim.n_samples={n_samples}", "eval.checkpoint_every_steps=1000")
    _submit(tmp_path / "straight", *long)
    r = _submit(tmp_path / "preempted", *long, wait=False)
    ids = _job_ids(r.stdout)
    (cell,) = (tmp_path / "preempted" / "smoke").glob("L*")
    # signals only once the cell's handler is installed: it logs "start" right after
    _wait_for(lambda: (cell / "train.log").exists(), 300, "the cell to start")
    time.sleep(4)  # into the training loop
    interrupt(ids["array"])  # a one-task batch is a plain job, not an array
    _wait_for(lambda: (cell / "DONE").exists(), 600, "the requeued cell to finish")
    log = (cell / "train.log").read_text()
    assert "interrupted" in log and "start (resuming)" in log, log
    (straight,) = (tmp_path / "straight" / "smoke").glob("L*")
    wa = load_file(str(cell_paths(straight).sae / "sae_weights.safetensors"))
    wb = load_file(str(cell_paths(cell).sae / "sae_weights.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = read_metrics(cell_paths(straight).metrics), read_metrics(cell_paths(cell).metrics)
    for k in ma["eval"]:
        assert np.array_equal(ma["eval"][k], mb["eval"][k]), k
    _wait_for(lambda: (tmp_path / "preempted" / "smoke" / "results" / "tables.md").exists(),
              300, "the collector")


def test_preempted_cell_requeues_and_ends_identical(tmp_path):
    """USR2: the time-limit warning, and preemption where the cluster sends a user signal."""
    _interrupted_cell_ends_identical(
        tmp_path, lambda job: subprocess.run(["scancel", "--signal=USR2", job], check=True))


def test_a_cell_preempted_by_a_higher_tier_partition_with_sigterm_resumes_identical(tmp_path):
    """Issue 20, item 2: `PreemptType=preempt/partition_prio`, `PreemptMode=REQUEUE` and no
    `send_user_signal` (slurm/local-cluster.sh): a job of the `urgent` partition that needs the
    whole node makes SLURM send the cell's job SIGTERM (SIGKILL after KillWait) and requeue it."""
    urgent = []

    def preempt(job: str) -> None:
        out = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "--exclusive",
                              f"--output={tmp_path}/urgent.out", "--wrap", "sleep 3"],
                             capture_output=True, text=True, check=True).stdout
        urgent.append(out.strip().split(";")[0])
        _wait_for(lambda: any(r["state"] == "COMPLETED" for r in _sacct(urgent[0])), 300,
                  "the urgent job")

    # long enough that the scheduler's preemption (seconds to ~40 s here) lands in training
    _interrupted_cell_ends_identical(tmp_path, preempt, n_samples=24_000)
    errs = [f.read_text() for f in (tmp_path / "preempted" / "smoke" / "_submitit").rglob("*.err")]
    assert any("interrupted by SIGTERM" in e for e in errs), errs


def test_a_cell_killed_with_sigkill_leaves_no_container_training_on(tmp_path):
    """SIGKILL (a GraceTime that runs out, `scancel --signal=KILL`) reaches the step's processes
    only, never podman's container (conmon is a daemon): the supervisor's watchdog
    (jobs/plan/containers.py) removes it, so the cell's lock is free for its rerun at once."""
    r = _submit(tmp_path, "settings=[e2e]", "optim.n_samples=24000",
                "eval.checkpoint_every_steps=1000", wait=False)
    ids = _job_ids(r.stdout)
    job = ids["array"]
    (cell,) = (tmp_path / "smoke").glob("L*")
    _wait_for(lambda: (cell / "train.log").exists(), 300, "the cell to start")
    time.sleep(4)  # into the training loop

    def containers() -> list[str]:
        return subprocess.run(["podman", "ps", "--filter", f"name=e2e-{job}-", "--format",
                               "{{.Names}}"], capture_output=True, text=True,
                              check=True).stdout.split()

    try:
        assert containers(), "the cell's container is not running under its job's name"
        # the collector and analysis of a grid killed on purpose: gone before they can start
        subprocess.run(["scancel", *(v for k, v in ids.items() if k != "array")], check=True)
        # to the step: KILL to the job kills srun, and SLURM ends the step with CONT and TERM
        subprocess.run(["scancel", "--signal=KILL", f"{job}.0"], check=True)
        _wait_for(lambda: not containers(), 30, "the killed job's container to be removed")
        assert not cell_paths(cell).done.exists()  # killed mid-training, not finished
        # `podman ps` drops a container while its processes are still being killed (CI saw the
        # lock held just after): the lock must come free within the wait a requeued job allows
        with cell_lock(cell, wait_s=REQUEUE_LOCK_WAIT_S):  # CellBusyError if it still trains
            pass
    finally:  # nothing left training on the cores the next tests time
        subprocess.run(["scancel", *ids.values()])
        subprocess.run(["podman", "rm", "-f", "-t", "0", *containers()], capture_output=True)


def _cells_by_axes(grid_dir: Path) -> dict[tuple, Path]:
    """Cell folders keyed by (layer, setting, λ)."""
    out = {}
    for d in grid_dir.glob("L*"):
        cfg = json.loads((d / "config.json").read_text())
        out[(cfg["layer"], cfg["loss"]["setting"], cfg["loss"]["sparsity_coeff"])] = d
    return out


def test_plain_sbatch_array_over_the_manifest_preempted_and_requeued_matches_submitit(tmp_path):
    from e2e.lm.pretrain import pretrain
    from jobs.plan.grids import SMOKE, pretrain_dir

    long = ("optim.n_samples=2400", "eval.checkpoint_every_steps=1000", "pack=2")
    _submit(tmp_path / "submitit", *long)
    plain = tmp_path / "plain"
    pretrain(SMOKE.pretrain, pretrain_dir(plain, "smoke"), progress=False)
    r = subprocess.run([sys.executable, "jobs/submit.py", "grid=smoke", f"root={plain}",
                        "executor=slurm", "container=podman", f"image={IMAGE}", "submit=false",
                        *long], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "slurm/array.sbatch" in r.stdout and "E2E_CONTAINER=podman" in r.stdout
    manifest = plain / "smoke" / "manifest.txt"
    packs = manifest.read_text().splitlines()
    assert [len(line.split()) for line in packs] == [2, 1, 1]  # packs of 2 and 1, ksvd
    env = {**os.environ, "E2E_CONTAINER": "podman", "E2E_IMAGE": IMAGE}
    out = subprocess.run(["sbatch", "--parsable", f"--array=0-{len(packs) - 1}",
                          "--cpus-per-task=1", "--time=30", f"--output={tmp_path}/%A_%a.out",
                          "slurm/array.sbatch", str(manifest)], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout
    array = out.strip().split(";")[0]
    first = packs[0].split()
    _wait_for(lambda: all((Path(d) / "train.log").exists() for d in first), 300,
              "task 0 to start")
    time.sleep(4)  # into the training loop
    subprocess.run(["scancel", "--signal=USR2", f"{array}_0"], check=True)
    _wait_for(lambda: all((d / "DONE").exists() for d in (plain / "smoke").glob("L*")), 600,
              "every cell of the array")
    for d in first:
        log = (Path(d) / "train.log").read_text()
        assert "interrupted" in log and "start (resuming) in a pack of 2" in log, log
        assert "tcmalloc malloc" in log, log
    ref, got = _cells_by_axes(tmp_path / "submitit" / "smoke"), _cells_by_axes(plain / "smoke")
    assert ref.keys() == got.keys() and len(ref) == 4
    for key in ref:
        wa = load_file(str(cell_paths(ref[key]).sae / "sae_weights.safetensors"))
        wb = load_file(str(cell_paths(got[key]).sae / "sae_weights.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), key
        ma = read_metrics(cell_paths(ref[key]).metrics)
        mb = read_metrics(cell_paths(got[key]).metrics)
        assert all(np.array_equal(ma["eval"][k], mb["eval"][k]) for k in ma["eval"]), key
