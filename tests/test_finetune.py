"""Warm starts and the fine-tune losses (docs/finetune.md): a child starts exactly where its
parent ended, refuses a parent it cannot start from, and balances KL to MSE as specified."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from e2e.config import ConfigError, InitConfig
from e2e.io import cell_paths
from e2e.store import read_metrics
from e2e.train import train
from e2e.train.warm import parent_mismatch, weights_sha256


def _local(cells):
    return next(c for c in cells if c.loss.setting == "local")


def _child(parent_cfg, parent_id, setting="e2e", **loss):
    return replace(parent_cfg, init=InitConfig(from_cell=parent_id),
                   loss=replace(parent_cfg.loss, setting=setting, balance_kl=True, **loss),
                   optim=replace(parent_cfg.optim, n_samples=16, warmup_samples=0))


@pytest.fixture(scope="module")
def parent(smoke_cells, tmp_path_factory):
    grid_dir = tmp_path_factory.mktemp("grid")
    cfg = _local(smoke_cells)
    assert train(cfg, grid_dir / "P", progress=False) == "done"
    return cfg, grid_dir


def test_step0_eval_of_a_warm_start_equals_its_parents_final_eval(parent):
    cfg, grid_dir = parent
    child = _child(cfg, "P", local_mse_coeff=0.5, kl_coeff=0.5)
    assert train(child, grid_dir / "C", progress=False) == "done"
    p, c = read_metrics(cell_paths(grid_dir / "P").metrics), read_metrics(
        cell_paths(grid_dir / "C").metrics)
    hist = c["eval_history"]
    assert hist["step"][0] == 0
    keys = [k for k in p["eval"] if k != "grad_norm"]
    # alive too: the child's alive window goes on from its parent's (it was 0 at step 0)
    assert {"ce_loss_increase", "l0", "alive_dict_elements"} <= set(keys)
    for k in keys:
        assert hist[k][0] == p["eval"][k], k  # exactly: the same weights on the same tokens
    # the recorded parent, scale and cost
    assert c["attrs"]["parent_sha256"] == weights_sha256(child, grid_dir / "P")
    meta = json.loads((cell_paths(grid_dir / "C").sae / "cfg.json").read_text())
    assert meta["init_from"] == "P" and meta["init_sha256"] == c["attrs"]["parent_sha256"]
    mse, kl = hist[f"mse/{cfg.hook_name}"][0], hist["kl_orig_sae"][0]
    assert c["attrs"]["kl_scale"] == pytest.approx(mse / kl, rel=1e-12)
    tokens = 16 * cfg.data.context_length
    assert c["attrs"]["tokens_prefix"] == tokens and c["attrs"]["tokens_suffix_patched"] == tokens
    assert p["attrs"]["tokens_suffix_patched"] == 0 and p["attrs"]["flops"] > 0


def test_balanced_loss_is_half_scaled_kl_plus_half_mse(parent):
    """The logged loss of the first step, recomputed from its logged terms."""
    cfg, grid_dir = parent
    child = _child(cfg, "P", local_mse_coeff=0.5, kl_coeff=0.5)
    m = read_metrics(cell_paths(grid_dir / "C").metrics)
    s, t = m["attrs"]["kl_scale"], m["train"]
    lam = child.loss.sparsity_coeff
    want = 0.5 * s * t["kl_orig_sae"][0] + 0.5 * t["local_mse"][0] + lam * t["sparsity"][0]
    assert t["loss"][0] == pytest.approx(want, rel=1e-5)


def test_a_parent_that_cannot_start_the_child_is_named(parent, tmp_path):
    cfg, grid_dir = parent
    assert parent_mismatch(_child(cfg, "missing"), grid_dir / "missing").endswith(
        f"no such cell in this grid ({grid_dir / 'missing'})")
    other = replace(_child(cfg, "P"), layer=2, sae=replace(cfg.sae, dict_size_to_input_ratio=2.0))
    why = parent_mismatch(other, grid_dir / "P")
    assert "hook: parent 'blocks.1.hook_resid_pre', child 'blocks.2.hook_resid_pre'" in why
    assert "sae.dict_size_to_input_ratio: parent 4.0, child 2.0" in why
    ksvd = replace(cfg, loss=replace(cfg.loss, setting="ksvd", sparsity_coeff=0.0))
    (tmp_path / "K").mkdir()
    (tmp_path / "K" / "config.json").write_text(ksvd.to_json())
    (tmp_path / "K" / "DONE").write_text("")
    assert "kind: parent 'ksvd', child 'sae'" in parent_mismatch(_child(cfg, "K"), tmp_path / "K")
    unfinished = tmp_path / "U"
    cell_paths(unfinished).root.mkdir()
    cell_paths(unfinished).config.write_text(cfg.to_json())
    assert "not finished" in parent_mismatch(_child(cfg, "U"), unfinished)
    with pytest.raises(ConfigError, match="not finished"):
        train(_child(cfg, "U"), tmp_path / "C", progress=False)


def test_from_path_loads_a_saelens_folder_and_checks_its_hook(parent, tmp_path):
    cfg, grid_dir = parent
    sae_dir = cell_paths(grid_dir / "P").sae
    child = replace(_child(cfg, ""), init=InitConfig(from_path=str(sae_dir)))
    assert parent_mismatch(child, sae_dir, d_in=32) is None
    assert "d_sae: parent 128, child 64" in parent_mismatch(
        replace(child, sae=replace(cfg.sae, dict_size_to_input_ratio=2.0)), sae_dir, d_in=32)
    meta = json.loads((sae_dir / "cfg.json").read_text())
    assert meta["hook_name"] == cfg.hook_name
    # SAELens 6 keeps the hook under `metadata`: the same folder written that way is accepted
    six = tmp_path / "six"
    six.mkdir()
    (six / "sae_weights.safetensors").write_bytes((sae_dir / "sae_weights.safetensors")
                                                  .read_bytes())
    nested = {k: v for k, v in meta.items() if k != "hook_name"}
    (six / "cfg.json").write_text(json.dumps({**nested, "metadata": {
        "hook_name": cfg.hook_name, "sae_lens_version": "6.5.0"}}))
    assert parent_mismatch(replace(child, init=InitConfig(from_path=str(six))), six,
                           d_in=32) is None
    # the shared root moved since a cell's folder there was written: its cfg.json names the LM
    # where it was (gone now); the same path under the root both share now is its model
    model = Path(cfg.model.name_or_path)
    moved = model.parents[1] / "moved-cell" / "sae"  # `<root>/<grid>/<cell>/sae`
    shutil.copytree(sae_dir, moved)
    try:
        for name, ok in ((str(Path("/gone/root", *model.parts[-3:])), True),
                         ("/gone/root/other/model", False)):
            (moved / "cfg.json").write_text(json.dumps({**meta, "model_name": name}))
            why = parent_mismatch(replace(child, init=InitConfig(from_path=str(moved))), moved,
                                  d_in=32)
            assert (why is None) == ok and (ok or "model_name: parent" in why), why
    finally:
        shutil.rmtree(moved.parent)
    changed = replace(child, init=replace(child.init, sha256="0" * 64))
    with pytest.raises(ConfigError, match="weights changed since submission"):
        train(changed, tmp_path / "C", progress=False)


def test_a_resumed_child_refuses_a_parent_that_changed(parent, tmp_path):
    cfg, grid_dir = parent
    import shutil
    shutil.copytree(grid_dir / "P", tmp_path / "P")
    child = replace(_child(cfg, "P"), optim=replace(cfg.optim, n_samples=96),
                    eval=replace(cfg.eval, checkpoint_every_steps=2))
    polls = iter(range(100))
    assert train(child, tmp_path / "C", progress=False,
                 should_stop=lambda: next(polls) == 3) == "interrupted"
    w = cell_paths(tmp_path / "P").sae / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes() + b" ")
    with pytest.raises(ConfigError, match="parent's weights changed since it started"):
        train(child, tmp_path / "C", progress=False)
    assert torch.load(cell_paths(tmp_path / "C").checkpoint, weights_only=True)["step"] == 3


# -- the stage: plan, dry run, refusals ----------------------------------------------------------

def _plan(*tokens):
    from jobs.plan.make import make_plan
    return make_plan(list(tokens))


def test_the_stage_adds_a_child_per_local_cell_recipe_and_fraction(smoke_root):
    from jobs.plan.finetune import recipe_of

    plan = _plan("grid=smoke", f"root={smoke_root}", "executor=local", "pack=3",
                 "finetune.settings=[e2e,e2e_mse]", "finetune.fractions=[0.25,0.5]")
    (local,) = [c for c in plan.cells if c.cfg.loss.setting == "local"]
    assert len(plan.children) == 4
    assert {recipe_of(c.cfg) for c in plan.children} == {"e2e", "e2e_mse"}
    for c in plan.children:
        parent, f = plan.child_of[c.id]
        assert parent == local.id and c.cfg.init.from_cell == local.id and not c.cfg.init.sha256
        assert c.cfg.optim.n_samples == f * local.cfg.optim.n_samples
        assert c.cfg.loss.sparsity_coeff == local.cfg.loss.sparsity_coeff  # λ carries over
        assert c.cfg.loss.balance_kl and c.id.startswith(f"L1-ft{c.cfg.optim.n_steps}-")
        # about four evaluations over the fine-tune by default; finetune.evals=0: none
        o = c.cfg.optim
        assert c.cfg.eval.every_samples == max(o.samples_per_step, o.n_samples // 4)
    plan0 = _plan("grid=smoke", f"root={smoke_root}", "executor=local", "pack=3",
                  "finetune.settings=[e2e]", "finetune.fractions=[0.5]", "finetune.evals=0")
    (c,) = plan0.children
    assert c.cfg.eval.every_samples == c.cfg.optim.n_samples  # no step is an eval step
    # task i of a fraction's array holds the children of the parents in cell task i
    tasks = dict(plan.child_tasks(plan.packs))
    (pack_of_local,) = [i for i, p in enumerate(plan.packs) if local in p]
    for f in (0.25, 0.5):
        assert [len(p) for p in tasks[f]][pack_of_local] == 2
        assert all(not p for i, p in enumerate(tasks[f]) if i != pack_of_local)


def test_the_analysis_job_is_sized_for_the_childrens_dictionaries_too(smoke_root):
    """The analysis reads the children's dictionaries beside their parents': its memory, time
    and feature-browser estimates count them (they did not: the demo's browser wrote 8,766
    pages where its plan said at most 6,912)."""
    base = ("grid=smoke", f"root={smoke_root}", "executor=local", "pack=3")
    alone = _plan(*base)
    staged = _plan(*base, "finetune.settings=[e2e,e2e_mse]", "finetune.fractions=[0.25,0.5]")
    assert len(staged.children) == 4 and staged.cells == alone.cells
    assert len(staged._dicts[0]) == len(alone._dicts[0]) + 4
    assert staged.browser_estimate[0] > alone.browser_estimate[0]
    assert staged.analysis_s > alone.analysis_s


def test_aligned_packs_keep_parent_task_indices():
    from jobs.plan.finetune import aligned_packs

    packs = aligned_packs([["a", "b"], ["c"], ["d"]],
                          [("a", 0.1, "a1"), ("b", 0.1, "b1"), ("d", 0.1, "d1"),
                           ("d", 0.2, "d2")], 0.1)
    assert packs == [["a1", "b1"], [], ["d1"]]


@pytest.mark.parametrize("tokens, message", [
    (["finetune.settings=[kl]"], "finetune.settings: 'kl' is not one of"),
    (["finetune.fractions=[0.1]"], "needs finetune.settings"),
    (["finetune.settings=[e2e]", "finetune.fractions=[1.5]"], "must be in (0, 1]"),
    (["settings=[e2e]", "finetune.settings=[e2e]"], "no local cells to fine-tune"),
    (["settings=[e2e]", "init.from_cell=L1-local-nope"], "no such cell in this grid"),
    (["settings=[e2e]", "init.from_path=/nonexistent"], "not a SAELens folder"),
    (["settings=[e2e]", "init.sha256=abc"], "init.sha256='abc' is invalid"),
    (["settings=[e2e]", "init.from_cell=../x"], "a cell id of this grid"),
    (["finetune.settings=[e2e]", "finetune.fractions=[0.5,0.5]"], "repeats a value"),
    (["finetune.settings=[e2e]", "finetune.evals=-1"], "finetune.evals=-1 is invalid"),
    (["finetune.settings=[e2e]", "finetune.fractions=[0.001]"], "less than one step"),
    (["init.from_path=/x"], "init.from_path='/x' is invalid: must be empty for a ksvd cell"),
])
def test_bad_stage_input_is_one_line_before_anything_is_written(smoke_root, tokens, message):
    with pytest.raises(ConfigError) as e:
        _plan("grid=smoke", f"root={smoke_root}", "executor=local", *tokens)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_paper_dry_run_prints_the_stage_and_its_gpu_hours_against_e2e(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "jobs/submit.py", "grid=paper", f"root={tmp_path}",
                        "dry_run=true", "finetune.settings=[e2e_mse]",
                        "finetune.fractions=[0.1]"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "fine-tune stage: 28 children of 28 local cells" in r.stdout
    assert "GPU-hours for e2e from scratch at the same 28 (layer, λ) points" in r.stdout
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_an_interrupted_child_resumes_bit_identical(parent, tmp_path):
    from test_train import _assert_identical

    cfg, grid_dir = parent
    import shutil
    shutil.copytree(grid_dir / "P", tmp_path / "P")
    child = replace(_child(cfg, "P", local_mse_coeff=0.5, kl_coeff=0.5),
                    optim=replace(cfg.optim, n_samples=64, warmup_samples=8),
                    eval=replace(cfg.eval, checkpoint_every_steps=2, every_samples=16))
    assert train(child, tmp_path / "straight", progress=False) == "done"
    for stop_at in (0, 5):  # before the first step (the start eval not yet run) and mid-run
        polls = iter(range(100))
        assert train(child, tmp_path / "resumed", progress=False,
                     should_stop=lambda n=stop_at, it=polls: next(it) == n) == "interrupted"
    assert train(child, tmp_path / "resumed", progress=False) == "done"
    _assert_identical(tmp_path / "straight", tmp_path / "resumed")


def test_a_local_run_trains_children_after_parents_and_the_collector_shows_them(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    args = [sys.executable, "jobs/submit.py", "grid=smoke", f"root={tmp_path}",
            "executor=local", "pack=4", "settings=[local,e2e]", "lambdas.local=[1,3]",
            "lambdas.e2e=[0.1,0.3]", "finetune.settings=[e2e,e2e_mse]",
            "finetune.fractions=[0.5]"]
    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    grid = tmp_path / "smoke"
    kids = sorted(grid.glob("L1-ft*"))
    assert len(kids) == 4 and all((d / "DONE").exists() for d in kids)
    for d in kids:  # each child started after its parent had finished
        parent = grid / json.loads((d / "config.json").read_text())["init"]["from_cell"]
        assert (parent / "DONE").stat().st_mtime <= (d / "train.log").stat().st_mtime
    results = grid / "results"
    assert "## Fine-tuned from local cells" in (results / "tables.md").read_text()
    headline = (results / "headline.txt").read_text()
    assert "ft-e2e_mse-lr0.1-50%: CE loss increase at equal L0" in headline, headline
    assert (results / "ce_vs_compute.png").exists()
    summary = (results / "summary.csv").read_text()
    assert "total_flops" in summary and "ft-e2e-lr0.1-50%" in summary
    r2 = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0 and "nothing to do" in r2.stdout, r2.stdout + r2.stderr


def test_the_plain_sbatch_path_writes_aligned_manifests_and_aftercorr_commands(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "jobs/submit.py", "grid=smoke", f"root={tmp_path}",
                        "executor=slurm", "submit=false", "lambdas.local=[1,2]",
                        "finetune.settings=[e2e_mse]", "finetune.fractions=[0.5]"],
                       cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    grid = tmp_path / "smoke"
    parents = (grid / "manifest.txt").read_text().splitlines()
    kids = (grid / "manifest-ft0.5.txt").read_text().splitlines()
    assert len(kids) == 2 and len(parents) >= 2  # local λ 1 and 2 are cell tasks 0 and 1
    for p_line, k_line in zip(parents, kids, strict=False):
        (child,) = k_line.split()
        cfg = json.loads((Path(child) / "config.json").read_text())
        assert cfg["init"]["from_cell"] == Path(p_line).name
    assert ("--dependency=aftercorr:$arr --kill-on-invalid-dep=yes" in r.stdout
            and "manifest-ft0.5.txt); all=\"$all:$ft\"" in r.stdout
            and "--dependency=afterany:$arr$all" in r.stdout), r.stdout
    # the smoke cells run on CPU: no GPU, overriding slurm/array.sbatch's `--gres=gpu:1`
    arrays = [x for x in r.stdout.splitlines() if "slurm/array.sbatch" in x]
    assert len(arrays) == 2 and all(" --gres=none " in x for x in arrays), arrays
    r = subprocess.run([sys.executable, "jobs/submit.py", "grid=smoke", f"root={tmp_path}",
                        "executor=slurm", "submit=false", "gpus_per_cell=2"],
                       cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                       text=True, timeout=120)
    assert " --gres=gpu:2 " in next(x for x in r.stdout.splitlines() if x.startswith("arr="))


def _karvonen(cfg, parent_id, **optim):
    from e2e.typed import with_overrides
    from jobs.plan.finetune import RECIPES

    child = with_overrides(cfg, {**RECIPES["karvonen"], "init.from_cell": parent_id})
    return replace(child, optim=replace(cfg.optim, **{"n_samples": 16, "warmup_samples": 0,
                                                      **optim}))


def test_karvonen_loss_is_recomputed_every_step_and_lambda_tracks_l0(parent, tmp_path):
    """Every logged step: loss = 0.5 (alpha KL + MSE) + λ_t S with alpha = MSE / (KL + 1e-8)
    of that step's batch (not a scale fixed at the start); λ_t = λ 0.999^a 1.001^b after a
    steps below the parent's L0 and b above."""
    import shutil

    cfg, grid_dir = parent
    shutil.copytree(grid_dir / "P", tmp_path / "P")
    child = _karvonen(cfg, "P")
    child = replace(child, eval=replace(child.eval, log_every_steps=1))
    assert train(child, tmp_path / "K", progress=False) == "done"
    m = read_metrics(cell_paths(tmp_path / "K").metrics)
    t, target = m["train"], m["eval_history"]["l0"][0]
    assert target == read_metrics(cell_paths(tmp_path / "P").metrics)["eval"]["l0"]
    lam = cfg.loss.sparsity_coeff
    alphas = []
    for i in range(len(t["loss"])):
        alpha = t["local_mse"][i] / (t["kl_orig_sae"][i] + 1e-8)
        alphas.append(alpha)
        assert t["kl_alpha"][i] == pytest.approx(alpha, rel=1e-4)
        lam_i = lam if i == 0 else t["sparsity_coeff"][i - 1]  # λ used in step i
        want = 0.5 * (alpha * t["kl_orig_sae"][i] + t["local_mse"][i]) + lam_i * t["sparsity"][i]
        assert t["loss"][i] == pytest.approx(want, rel=1e-4), i
        factor = 0.999 if t["l0"][i] < target else 1.001
        assert t["sparsity_coeff"][i] == pytest.approx(lam_i * factor, rel=1e-6), i  # float32
    assert max(alphas) > min(alphas) * 1.001  # recomputed, not fixed


def test_karvonen_child_resumes_bit_identical_and_topk_has_no_controller(parent, tmp_path):
    import shutil

    from test_train import _assert_identical

    from jobs.plan.finetune import Finetune, child, recipe_of

    cfg, grid_dir = parent
    shutil.copytree(grid_dir / "P", tmp_path / "P")
    k = _karvonen(cfg, "P", n_samples=48, warmup_samples=8)
    k = replace(k, eval=replace(cfg.eval, checkpoint_every_steps=2, every_samples=16))
    assert train(k, tmp_path / "straight", progress=False) == "done"
    polls = iter(range(100))
    assert train(k, tmp_path / "resumed", progress=False,
                 should_stop=lambda it=polls: next(it) == 4) == "interrupted"
    assert train(k, tmp_path / "resumed", progress=False) == "done"
    _assert_identical(tmp_path / "straight", tmp_path / "resumed")
    topk = replace(cfg, sae=replace(cfg.sae, activation="topk", k=4),
                   loss=replace(cfg.loss, sparsity_coeff=0.0))
    kid = child(topk, "P", "karvonen", 0.5, Finetune(settings=("karvonen",)))
    assert not kid.loss.track_l0 and kid.loss.balance_kl_every_step
    assert recipe_of(kid) == "karvonen"


def test_the_per_step_balance_needs_both_terms():
    """It balances KL against the hook's MSE: a loss without either is refused in one line
    (it raised KeyError on the first step)."""
    from e2e.config import LossConfig

    for bad in ({"setting": "e2e"}, {"setting": "local", "local_mse_coeff": 1.0},
                {"setting": "e2e", "local_mse_coeff": 0.5, "kl_coeff": 0.0}):
        with pytest.raises(ConfigError, match="loss.balance_kl_every_step"):
            LossConfig(balance_kl_every_step=True, **bad)
    LossConfig(setting="e2e", balance_kl_every_step=True, local_mse_coeff=0.5, kl_coeff=0.5)


def test_a_child_of_a_folder_records_its_first_alive_count_as_unknown(parent, tmp_path):
    """A SAELens folder carries no alive window: the child's step-0 alive count is nan (it
    was 0, so curves dropped to zero and climbed back), then its own."""
    import math

    cfg, grid_dir = parent
    sae_dir = cell_paths(grid_dir / "P").sae
    child = replace(_child(cfg, ""), init=InitConfig(from_path=str(sae_dir)))
    assert train(child, tmp_path / "C", progress=False) == "done"
    alive = read_metrics(cell_paths(tmp_path / "C").metrics)["eval_history"][
        "alive_dict_elements"]
    assert math.isnan(alive[0]) and alive[-1] > 0


def _foreign(parent, tmp_path, edit, tensors=None):
    """The parent's sae/ folder with its cfg.json edited (and tensors added)."""
    from safetensors.torch import load_file, save_file

    cfg, grid_dir = parent
    src = cell_paths(grid_dir / "P").sae
    out = tmp_path / "foreign"
    out.mkdir()
    meta = json.loads((src / "cfg.json").read_text())
    (out / "cfg.json").write_text(json.dumps(edit(meta)))
    w = load_file(str(src / "sae_weights.safetensors"))
    save_file({**w, **(tensors or {})}, str(out / "sae_weights.safetensors"))
    return out


def _drop(meta, *keys):
    return {k: v for k, v in meta.items() if k not in keys}


@pytest.mark.parametrize("edit, tensors, message", [
    # a JumpReLU SAE whose cfg.json lost its architecture: it loaded as ReLU, threshold dropped
    (lambda m: _drop(m, "architecture"), {"threshold": torch.ones(128)},
     "the weights hold 'threshold', which a 'standard' SAE does not use (a JumpReLU SAE's"),
    # SAELens's older boolean spelling: it passed the plan and failed once queued
    (lambda m: {**m, "normalize_activations": True}, None, "normalize_activations True"),
    (lambda m: {**m, "model_name": "pythia-70m"}, None, "model_name: parent 'pythia-70m'"),
    (lambda m: {**m, "model_from_pretrained_kwargs": {"fold_ln": False}}, None,
     "model_from_pretrained_kwargs.fold_ln: parent False, child True"),
])
def test_a_foreign_parent_is_refused_at_the_plan_naming_why(parent, smoke_root, tmp_path, edit,
                                                            tensors, message):
    folder = _foreign(parent, tmp_path, edit, tensors)
    with pytest.raises(ConfigError) as e:
        _plan("grid=smoke", f"root={smoke_root}", "executor=local", "settings=[e2e]",
              f"init.from_path={folder}")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_old_and_other_context_parents_are_read_as_saelens_reads_them(parent, smoke_root,
                                                                      tmp_path):
    """A pre-SAELens-6 folder (`hook_point`) is accepted; a parent trained on other contexts
    or with a BOS is accepted with a line in the plan."""
    folder = _foreign(parent, tmp_path, lambda m: {
        **_drop(m, "hook_name", "hook_layer"), "hook_point": m["hook_name"],
        "hook_point_layer": m["hook_layer"], "context_size": 128, "prepend_bos": True})
    plan = _plan("grid=smoke", f"root={smoke_root}", "executor=local", "settings=[e2e]",
                 f"init.from_path={folder}")
    notes = "\n".join(plan.notes)
    assert "contexts of 128 tokens; its child on 32" in notes and "prepend_bos" in notes


def test_a_staged_model_folder_is_the_model_it_copied(tmp_path):
    """A staged run reads `<root>/_sources/<key>/model`: a folder parent of the same model
    (by its manifest, or a TransformerLens alias) is not 'another model'."""
    from e2e.train.warm import _official

    (tmp_path / "model").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps({"sources": {"model": "gpt2"}}))
    assert _official(str(tmp_path / "model")) == _official("gpt2-small") == "gpt2"
    assert _official("/some/own/model") == "/some/own/model"
