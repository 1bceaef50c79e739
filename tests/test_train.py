import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from e2e.config import ConfigError
from e2e.io import cell_paths
from e2e.store import read_metrics
from e2e.train import NonFiniteLossError, lr_factor, train, train_pack
from e2e.train.lock import CellBusyError, cell_lock

REPO = Path(__file__).resolve().parent.parent


def _longer(cfg):
    """A few more steps and frequent checkpoints, so interruptions land mid-run."""
    return replace(cfg, optim=replace(cfg.optim, n_samples=160),
                   eval=replace(cfg.eval, checkpoint_every_steps=3, every_samples=40))


def _sae(cells):
    """The smoke grid's SAE cells (its ksvd cell trains alone, never in a pack)."""
    return [c for c in cells if c.loss.setting != "ksvd"]


def _outputs(cell_dir: Path):
    p = cell_paths(cell_dir)
    m = read_metrics(p.metrics)
    return load_file(str(p.sae / "sae_weights.safetensors")), m


def _assert_identical(a: Path, b: Path):
    (wa, ma), (wb, mb) = _outputs(a), _outputs(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for group in ("train", "eval_history", "eval"):
        assert ma[group].keys() == mb[group].keys()
        for k in ma[group]:
            assert np.array_equal(ma[group][k], mb[group][k]), (group, k)


@pytest.mark.parametrize("setting", ["local", "e2e", "e2e_ds"])
def test_each_setting_trains_and_writes_its_outputs(smoke_cells, tmp_path, setting):
    (cfg,) = [c for c in smoke_cells if c.loss.setting == setting]
    assert train(cfg, tmp_path, progress=False) == "done"
    p = cell_paths(tmp_path)
    for f in (p.config, p.metrics, p.sae / "cfg.json", p.sae / "sae_weights.safetensors",
              p.checkpoint, p.done):
        assert f.exists(), f
    m = read_metrics(p.metrics)
    ev = m["eval"]
    for k in ("ce_loss_orig", "ce_loss_sae", "ce_loss_increase", "kl_orig_sae",
              "top1_agreement", "l0", "alive_dict_elements", "grad_norm",
              f"mse/{cfg.hook_name}", f"explained_variance/{cfg.hook_name}",
              f"explained_variance_pooled/{cfg.hook_name}",
              "mse/blocks.2.hook_resid_pre"):
        assert k in ev and np.isfinite(ev[k]), k
    assert ev["ce_loss_increase"] == pytest.approx(ev["ce_loss_sae"] - ev["ce_loss_orig"])
    assert ev["kl_orig_sae"] >= 0
    assert m["alive_mask"].dtype == bool and m["alive_mask"].shape == (1, 4 * 32)
    term = {"local": "local_mse", "e2e": "kl_orig_sae", "e2e_ds": "downstream_mse"}[setting]
    assert term in m["train"] and len(m["train"]["step"]) == len(m["train"]["loss"])
    with h5py.File(p.metrics) as f:
        assert "config" in f.attrs


def test_done_cell_returns_at_once(smoke_cells, tmp_path):
    cfg = smoke_cells[0]
    train(cfg, tmp_path, progress=False)
    before = {f: f.stat().st_mtime_ns for f in tmp_path.rglob("*") if f.is_file()}
    t0 = time.perf_counter()
    assert train(cfg, tmp_path, progress=False) == "done"
    assert time.perf_counter() - t0 < 0.5  # no model was loaded
    assert before == {f: f.stat().st_mtime_ns for f in tmp_path.rglob("*") if f.is_file()}


@pytest.mark.parametrize("setting", ["local", "e2e_ds"])
def test_interrupt_and_resume_is_bit_identical(smoke_cells, tmp_path, setting):
    (cfg,) = [_longer(c) for c in smoke_cells if c.loss.setting == setting]
    train(cfg, tmp_path / "straight", progress=False)
    for stop_at in (4, 7):  # two interruptions, one between checkpoints
        polls = iter(range(1000))
        status = train(cfg, tmp_path / "resumed", progress=False,
                       should_stop=lambda n=stop_at, it=polls: next(it) == n)
        assert status == "interrupted"
    assert train(cfg, tmp_path / "resumed", progress=False) == "done"
    _assert_identical(tmp_path / "straight", tmp_path / "resumed")


def test_excluded_tokens_train_e2e_ds_resume_bit_identical_and_name_their_ids(smoke_cells,
                                                                             tmp_path):
    """`data.exclude_tokens=special` on the smoke LM (its text is packed with an EOS after
    every document: separators mid-row): the cell trains on the other positions, resumes
    bit-identically, and its SAELens cfg.json names the ids it never acted on."""
    import json

    (cfg,) = [_longer(c) for c in smoke_cells if c.loss.setting == "e2e_ds"]
    cfg = replace(cfg, data=replace(cfg.data, exclude_tokens="special"))
    train(cfg, tmp_path / "straight", progress=False)
    polls = iter(range(1000))
    assert train(cfg, tmp_path / "resumed", progress=False,
                 should_stop=lambda it=polls: next(it) == 5) == "interrupted"
    assert train(cfg, tmp_path / "resumed", progress=False) == "done"
    _assert_identical(tmp_path / "straight", tmp_path / "resumed")
    meta = json.loads((cell_paths(tmp_path / "straight").sae / "cfg.json").read_text())
    from e2e.model import load_model
    from e2e.model.positions import special_ids

    ids = special_ids(load_model(cfg.model).tokenizer)
    assert meta["exclude_special_tokens"] == list(ids) and ids
    plain = read_metrics(cell_paths(tmp_path / "straight").metrics)["attrs"]
    # the model ran on every position; the SAE on the kept ones (fewer)
    assert plain["tokens_sae"] < plain["tokens_prefix"]


def _cell_past_first_checkpoint(cfg, cell: Path, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """`python -m jobs.cell` on a new folder for `cfg`, returned once it is somewhere after
    its first checkpoint, mid-step."""
    cell_paths(cell).root.mkdir()
    cell_paths(cell).config.write_text(cfg.to_json())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cell", str(cell)], env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    deadline = time.time() + 120
    while not cell_paths(cell).checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    return proc


def test_sigkill_at_any_point_then_resume_is_bit_identical(smoke_cells, tmp_path):
    cfg = _longer([c for c in smoke_cells if c.loss.setting == "e2e"][0])
    cfg = replace(cfg, optim=replace(cfg.optim, n_samples=400))
    train(cfg, tmp_path / "straight", progress=False)
    killed = tmp_path / "killed"
    proc = _cell_past_first_checkpoint(cfg, killed)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not cell_paths(killed).done.exists()
    assert train(cfg, killed, progress=False) == "done"
    _assert_identical(tmp_path / "straight", killed)


def test_sigterm_checkpoints_at_once_and_the_cell_resumes_bit_identical(smoke_cells, tmp_path):
    """Preemption without `send_user_signal` is SIGTERM, then SIGKILL after KillWait: the
    cell checkpoints at the end of its running step and exits 143, nothing lost."""
    cfg = _longer([c for c in smoke_cells if c.loss.setting == "e2e"][0])
    cfg = replace(cfg, optim=replace(cfg.optim, n_samples=400),
                  eval=replace(cfg.eval, checkpoint_every_steps=10))
    train(cfg, tmp_path / "straight", progress=False)
    cell = tmp_path / "termed"
    proc = _cell_past_first_checkpoint(cfg, cell, stderr=subprocess.PIPE)  # after step 10
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in err, err
    step = torch.load(cell_paths(cell).checkpoint, weights_only=True)["step"]
    assert 10 <= step < cfg.optim.n_steps and not cell_paths(cell).done.exists()
    assert "interrupted" in cell_paths(cell).log.read_text()
    assert train(cfg, cell, progress=False) == "done"
    _assert_identical(tmp_path / "straight", cell)


def test_non_finite_loss_stops_with_step_and_never_marks_done(smoke_cells, tmp_path,
                                                             monkeypatch):
    import e2e.train.member as t

    real = t.setting_loss
    calls = []

    def poisoned(*a, **k):
        total, terms = real(*a, **k)
        calls.append(1)
        return (total * float("nan") if len(calls) > 4 else total), terms

    monkeypatch.setattr(t, "setting_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        train(smoke_cells[0], tmp_path, progress=False)
    assert not cell_paths(tmp_path).done.exists()


def test_lr_schedule_warmup_then_cosine_to_tenth(smoke_cells):
    o = replace(smoke_cells[0].optim, warmup_samples=40, n_samples=400)  # 5 warmup of 50 steps
    assert lr_factor(0, o) == pytest.approx(0.2)
    assert lr_factor(4, o) == pytest.approx(1.0)
    assert lr_factor(o.n_steps, o) == pytest.approx(0.1)
    assert lr_factor(5 + 22, o) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 22 / 45)))


def test_wandb_offline_on_request(smoke_cells, tmp_path):
    cfg = replace(smoke_cells[0], wandb=replace(smoke_cells[0].wandb, mode="offline"))
    assert train(cfg, tmp_path, progress=False) == "done"
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_a_pack_ends_bit_identical_to_its_cells_run_alone(smoke_cells, tmp_path):
    cfgs = [_longer(c) for c in _sae(smoke_cells)]  # local, e2e, e2e_ds: one pack
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"alone{i}", progress=False)
    dirs = [tmp_path / f"pack{i}" for i in range(len(cfgs))]
    assert train_pack(cfgs, dirs, progress=False) == ["done"] * 3
    for i in range(len(cfgs)):
        _assert_identical(tmp_path / f"alone{i}", dirs[i])


def test_a_pack_resumes_members_at_different_steps_and_skips_finished_ones(smoke_cells,
                                                                          tmp_path):
    cfgs = [_longer(c) for c in _sae(smoke_cells)]
    dirs = [tmp_path / f"pack{i}" for i in range(len(cfgs))]
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"alone{i}", progress=False)
    train(cfgs[0], dirs[0], progress=False)  # member 0 finished alone
    polls = iter(range(1000))  # the pack stops at step 4 ...
    assert train_pack(cfgs, dirs, progress=False,
                      should_stop=lambda: next(polls) == 4) == ["done"] + ["interrupted"] * 2
    polls = iter(range(1000))  # ... then member 2 goes on alone to step 10
    train(cfgs[2], dirs[2], progress=False, should_stop=lambda: next(polls) == 6)
    assert train_pack(cfgs, dirs, progress=False) == ["done"] * 3
    for i in range(len(cfgs)):
        _assert_identical(tmp_path / f"alone{i}", dirs[i])


def test_a_cell_is_trained_by_one_process_at_a_time(smoke_cells, tmp_path):
    cfg = smoke_cells[0]
    with cell_lock(tmp_path), pytest.raises(CellBusyError, match=f"pid {os.getpid()}"):
        train(cfg, tmp_path, progress=False)
    assert train(cfg, tmp_path, progress=False) == "done"  # free again once released


def test_a_lock_held_by_a_dying_process_is_waited_for_only_when_asked(tmp_path):
    """A requeued job waits for its killed predecessor's lock (jobs/run/cell.py); others refuse."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from e2e.train.lock import cell_lock\n"
        f"with cell_lock(Path({str(tmp_path)!r})):\n"
        "    print('held', flush=True); time.sleep(2)")], cwd=REPO, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(CellBusyError, match="another process"), cell_lock(tmp_path):
            pass
        start = time.monotonic()
        with cell_lock(tmp_path, wait_s=60):
            assert 0.5 < time.monotonic() - start < 30  # waited for the holder, not the deadline
    finally:
        holder.kill()
        holder.wait()


def test_cells_that_differ_in_more_than_loss_are_not_packed(smoke_cells, tmp_path):
    a, b = smoke_cells[0], replace(smoke_cells[1], seed=1)
    with pytest.raises(ConfigError, match=r"differ in \['seed'\]"):
        train_pack([a, b], [tmp_path / "a", tmp_path / "b"], progress=False)


# The architectures of issue 22, each with the terms its training log must show beside the
# setting's: ReLU (the paper's), BatchTopK, Matryoshka with AuxK, JumpReLU, TopK with AuxK
# (dead after one micro-batch of 128 tokens without firing, so AuxK acts in a short run).
ARCHITECTURES = {
    "relu": ({}, ()),
    "batchtopk": ({"activation": "batchtopk", "k": 4}, ()),
    "matryoshka": ({"activation": "matryoshka", "k": 4, "matryoshka_widths": (0.25, 0.5),
                    "auxk_coeff": 1 / 32, "auxk_dead_tokens": 128}, ("auxk", "prefix32/")),
    "jumprelu": ({"activation": "jumprelu"}, ()),
    "topk_auxk": ({"activation": "topk", "k": 4, "auxk_coeff": 1 / 32,
                   "auxk_dead_tokens": 128}, ("auxk",)),
}


def _with_architecture(cfg, name: str):
    fields, _ = ARCHITECTURES[name]
    sae = replace(cfg.sae, **fields)
    loss = replace(cfg.loss, sparsity_coeff=0.0) if sae.uses_k else cfg.loss
    return replace(cfg, sae=sae, loss=loss)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_sigkilled_pack_resumes_every_member_bit_identical(smoke_cells, tmp_path, arch):
    """Every architecture in a pack of local, e2e and e2e_ds: SIGKILLed after a checkpoint,
    resumed, each member ends bit-identical to its cell trained alone."""
    from e2e.arch.config import SAVED_AS

    cfgs = [_with_architecture(replace(_longer(c), optim=replace(_longer(c).optim,
                                                                 n_samples=400)), arch)
            for c in _sae(smoke_cells)]
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"alone{i}", progress=False)
    dirs = [tmp_path / f"pack{i}" for i in range(len(cfgs))]
    for d, cfg in zip(dirs, cfgs, strict=True):
        d.mkdir()
        cell_paths(d).config.write_text(cfg.to_json())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cell", *map(str, dirs)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not cell_paths(dirs[-1]).checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not any(cell_paths(d).done.exists() for d in dirs)
    assert train_pack(cfgs, dirs, progress=False) == ["done"] * 3
    for i in range(len(cfgs)):
        _assert_identical(tmp_path / f"alone{i}", dirs[i])
    for d, cfg in zip(dirs, cfgs, strict=True):
        saved = json.loads((cell_paths(d).sae / "cfg.json").read_text())
        assert saved["architecture"] == SAVED_AS[cfg.sae.activation]
        logged = read_metrics(cell_paths(d).metrics)["train"]
        for term in ARCHITECTURES[arch][1]:
            assert any(k.startswith(term) for k in logged), (term, sorted(logged))
        assert np.isfinite(read_metrics(cell_paths(d).metrics)["eval"]["ce_loss_increase"])


@pytest.mark.parametrize("setting", ["local", "e2e"])
def test_bfloat16_autocast_tracks_float32_over_a_short_run(smoke_cells, tmp_path, setting):
    """bf16 matmuls with fp32 weights, loss, KL and metrics: every logged loss within 0.5% of
    fp32's (the bar for making it the default where the chip has bf16)."""
    (cfg,) = [_longer(c) for c in smoke_cells if c.loss.setting == setting]
    train(replace(cfg, dtype="float32"), tmp_path / "fp32", progress=False)
    train(replace(cfg, dtype="bfloat16"), tmp_path / "bf16", progress=False)
    (_, a), (_, b) = _outputs(tmp_path / "fp32"), _outputs(tmp_path / "bf16")
    rel = np.abs(np.asarray(b["train"]["loss"]) / np.asarray(a["train"]["loss"]) - 1)
    print(f"{setting}: bf16 loss / fp32 loss - 1: max {rel.max():.4f} over {rel.size} steps")
    assert rel.max() < 0.005
    for k in ("kl_orig_sae", "l0", "ce_loss_sae"):
        assert b["eval"][k] == pytest.approx(a["eval"][k], rel=0.02), k
    assert read_metrics(cell_paths(tmp_path / "bf16").metrics)["attrs"]["train_dtype"] == (
        "bfloat16")
    p = cell_paths(tmp_path / "bf16")
    w = load_file(str(p.sae / "sae_weights.safetensors"))
    assert all(t.dtype == torch.float32 for t in w.values())  # fp32 master weights


def test_compiled_passes_track_eager_fp32_and_resume_bit_identical(smoke_cells, tmp_path,
                                                                   recwarn):
    """`model.compile=on` (a paper-sized cell's default) in the default dtype: every logged
    loss within 0.5% of the eager fp32 path's; interrupted and resumed (the resumed run
    traces and compiles its passes again), bit-identical to its own straight run."""
    (cfg,) = [_longer(c) for c in smoke_cells if c.loss.setting == "e2e_ds"]
    on = replace(cfg, model=replace(cfg.model, compile="on"))
    train(replace(cfg, dtype="float32"), tmp_path / "eager", progress=False)
    train(on, tmp_path / "straight", progress=False)
    (_, a), (_, b) = _outputs(tmp_path / "eager"), _outputs(tmp_path / "straight")
    rel = np.abs(np.asarray(b["train"]["loss"]) / np.asarray(a["train"]["loss"]) - 1)
    print(f"compiled {on.dtype} loss / eager fp32 loss - 1: max {rel.max():.4f} over "
          f"{rel.size} steps")
    assert rel.max() < 0.005
    polls = iter(range(1000))
    assert train(on, tmp_path / "resumed", progress=False,
                 should_stop=lambda: next(polls) == 5) == "interrupted"
    assert train(on, tmp_path / "resumed", progress=False) == "done"
    _assert_identical(tmp_path / "straight", tmp_path / "resumed")
    eager = [str(w.message) for w in recwarn if "eagerly" in str(w.message)]
    assert not eager, eager  # it did compile


def test_alive_mask_marks_exactly_the_elements_that_fire_on_the_alive_pass_tokens(
        smoke_cells, smoke_model, tmp_path):
    from e2e.data.tokens import eval_stream
    from e2e.model import resid_pre
    from e2e.saelens import load_saelens

    cfg = smoke_cells[0]
    train(cfg, tmp_path, progress=False)
    sae, _ = load_saelens(cell_paths(tmp_path).sae)
    evs = eval_stream(cfg.data, smoke_model.tokenizer, cfg.seed)
    fired = torch.zeros(sae.n_dict, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(cfg.alive_pass_batches):
            c = sae.encode(resid_pre(smoke_model, evs.next_batch(cfg.eval.batch_size),
                                     cfg.layer))
            fired |= (c > 0).reshape(-1, sae.n_dict).any(0)
    mask = read_metrics(cell_paths(tmp_path).metrics)["alive_mask"][0]
    assert np.array_equal(mask, fired.numpy()) and 0 < mask.sum() < sae.n_dict + 1


def test_a_damaged_checkpoint_falls_back_to_the_one_before_it(smoke_cells, tmp_path, capsys):
    """A truncated checkpoint.pt (a full disk, a lost NFS write) was `OSError: [Errno 22]`
    and a FAILED cell; now the cell resumes from checkpoint.prev.pt, to the same result."""
    (cfg,) = [_longer(c) for c in smoke_cells if c.loss.setting == "local"]
    train(cfg, tmp_path / "straight", progress=False)
    cell = cell_paths(tmp_path / "damaged")
    for stop_at in (4, 7):  # two checkpoints: the second keeps the first as .prev
        polls = iter(range(1000))
        train(cfg, cell.root, progress=False, should_stop=lambda n=stop_at, it=polls: next(it) == n)
    prev = cell.checkpoint.with_name("checkpoint.prev.pt")
    assert prev.exists()
    cell.checkpoint.write_bytes(cell.checkpoint.read_bytes()[:1000])  # truncated
    (cell.root / f".metrics.h5.{os.getpid() + 1}.tmp").write_bytes(b"half")  # a killed write
    assert train(cfg, cell.root, progress=False) == "done"
    assert "checkpoint.pt is damaged" in capsys.readouterr().out
    _assert_identical(tmp_path / "straight", cell.root)
    assert not list(cell.root.rglob(".*.tmp"))  # the killed writer's leftover is gone


def test_a_damaged_checkpoint_with_none_before_it_is_one_line(smoke_cells, tmp_path):
    from e2e.io import CheckpointError

    (cfg,) = [_longer(c) for c in smoke_cells if c.loss.setting == "local"]
    cell = cell_paths(tmp_path / "c")
    polls = iter(range(1000))
    train(cfg, cell.root, progress=False, should_stop=lambda it=polls: next(it) == 4)
    cell.checkpoint.write_bytes(b"")
    cell.checkpoint.with_name("checkpoint.prev.pt").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is damaged .* delete it to start "
                                              r"this cell over$"):
        train(cfg, cell.root, progress=False)


@pytest.mark.parametrize(("first", "then"), [(True, False), (False, True)])
def test_a_cell_resumed_on_another_chip_kind_keeps_its_checkpoints_dtype(
        smoke_cells, tmp_path, monkeypatch, first, then, capfd):
    """dtype=auto started where the chip has native bf16 (bf16) and requeued onto one without
    (fp32 there), and the reverse: it trains on in the dtype it started in, bit-identical to
    a run that never moved, and metrics.h5 says that dtype."""
    import e2e.kernels.chip

    cfg = _longer([c for c in smoke_cells if c.loss.setting == "e2e"][0])
    assert cfg.dtype == "auto"
    started = "bfloat16" if first else "float32"
    monkeypatch.setattr(e2e.kernels.chip, "native_bf16", lambda device: first)
    train(cfg, tmp_path / "straight", progress=False)
    polls = iter(range(1000))
    assert train(cfg, tmp_path / "moved", progress=False,
                 should_stop=lambda: next(polls) == 5) == "interrupted"
    monkeypatch.setattr(e2e.kernels.chip, "native_bf16", lambda device: then)
    capfd.readouterr()
    assert train(cfg, tmp_path / "moved", progress=False) == "done"
    assert f"resuming in {started}" in capfd.readouterr().err
    for run in ("straight", "moved"):
        assert read_metrics(cell_paths(tmp_path / run).metrics)["attrs"]["train_dtype"] == started
    _assert_identical(tmp_path / "straight", tmp_path / "moved")


def test_the_avx2_emulation_resolves_auto_to_float32(tmp_path):
    """`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` (the other CPU kind's kernels on
    this machine): native_bf16 answers no, dtype=auto resolves to float32; either variable
    alone is enough; compiled kernels go to a cache of their own."""
    code = ("import os, torch, e2e.kernels; from e2e.kernels.chip import native_bf16, train_dtype; "
            "d = torch.device('cpu'); print(native_bf16(d), train_dtype('auto', d), "
            "os.environ['TORCHINDUCTOR_CACHE_DIR'], torch.backends.cpu.get_cpu_capability())")
    base = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    for env in ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
                {"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"},
                {"ATEN_CPU_CAPABILITY": "avx2", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}):
        out = subprocess.run([sys.executable, "-c", code], env={**base, **env,
                             "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                             check=True).stdout.split()
        assert out[:2] == ["False", "float32"], env
        # inductor's cache per kernel set (its keys do not tell AVX-512 code from AVX2
        # code: under the emulation a cached AVX-512 kernel made a smoke cell's loss NaN),
        # unless the user chose the folder
        assert out[2] == env.get("TORCHINDUCTOR_CACHE_DIR", out[2].rsplit("-", 1)[0] + "-"
                                 + out[3]), (env, out)
        assert out[3] == "AVX2" or "ATEN_CPU_CAPABILITY" not in env
