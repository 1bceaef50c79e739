"""`train(cfg, out_dir)` and `train_pack(cfgs, out_dirs)`: train cells, resume them, or return.

A pack is several cells that differ only in their loss (setting, λ): the same model, layer,
data, seed and batch schedule, so they see the same token batches. The frozen model's clean
pass runs once per batch for the whole pack; each member (`e2e.member.Member`) then runs its
own SAE, patched suffix, loss, backward and optimizer. A single cell is a pack of one. Every
member keeps its own folder (names from `e2e.io.cell_paths`): config.json, checkpoint.pt,
metrics.h5, sae/ (SAELens format) and DONE, written last; each folder is locked while it trains.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from e2e.config import CellConfig, ConfigError, check_layer, check_packable
from e2e.data import TokenStream, eval_stream
from e2e.io import atomic_path, atomic_write_text, cell_lock, cell_paths
from e2e.member import Member, NonFiniteLossError, lr_factor
from e2e.metrics import evaluate_pack, evaluate_synthetic
from e2e.model import CleanPass, clean_pass, load_model
from e2e.synthetic import SyntheticStream, truth_metrics

__all__ = ["train", "train_pack", "pack_step", "NonFiniteLossError", "MemberFailed",
           "lr_factor"]


class MemberFailed(RuntimeError):
    """Some members of a pack failed (the others finished or checkpointed first)."""

    def __init__(self, failures: dict[str, BaseException]):
        self.failures = failures
        super().__init__("; ".join(f"{Path(d).name}: {e}" for d, e in failures.items()))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(cfg: CellConfig, out_dir: Path | str, should_stop: Callable[[], bool] | None = None,
          progress: bool = True) -> str:
    """Trains (or resumes) one cell; returns "done", or "interrupted" if `should_stop()` fired.

    `should_stop` is polled between optimizer steps; when it returns True the state is
    checkpointed and the function returns, so a preempted job can requeue and resume exactly.
    """
    try:
        return train_pack([cfg], [out_dir], should_stop, progress)[0]
    except MemberFailed as e:
        raise next(iter(e.failures.values())) from None


def train_pack(cfgs: list[CellConfig], out_dirs: list[Path | str],
               should_stop: Callable[[], bool] | None = None, progress: bool = True
               ) -> list[str]:
    """Trains (or resumes) the cells as one pack; a status per cell, as `train` returns.

    Members that finished earlier are skipped; members whose checkpoints are at different steps
    (a pack killed mid-checkpoint) resume from the earliest, the others waiting until the pack
    reaches their step, so every member ends exactly as if it had run alone. A member whose
    loss goes non-finite stops; the others go on, then `MemberFailed` names it.
    """
    if not cfgs or len(cfgs) != len(out_dirs):
        raise ValueError("train_pack needs one output folder per config")
    check_packable(cfgs)
    with contextlib.ExitStack() as locks:
        todo = []
        for i, d in enumerate(out_dirs):
            paths = cell_paths(d)
            if paths.done.exists():
                continue
            paths.root.mkdir(parents=True, exist_ok=True)
            locks.enter_context(cell_lock(paths.root))
            if paths.done.exists():  # finished by another process just before we locked it
                continue
            if not paths.config.exists():
                atomic_write_text(paths.config, cfgs[i].to_json())
            elif CellConfig.from_json(paths.config.read_text()) != cfgs[i]:
                raise ConfigError(f"{paths.config} holds a different config than the one given")
            todo.append(i)
        status = ["done"] * len(cfgs)
        if todo:
            result = _run_pack([cfgs[i] for i in todo], [out_dirs[i] for i in todo],
                               should_stop, progress)
            for i, s in zip(todo, result, strict=True):
                status[i] = s
        return status


def pack_step(model, members: list[Member], micro_batches: list[torch.Tensor], step: int,
              log: bool, autocast=None) -> None:
    """One optimizer step of every member on the same micro-batches; the clean model runs
    once per micro-batch for all of them, only as far as some member needs. Without a model
    (`model=None`, synthetic data) the micro-batches are the activations themselves."""
    layer = members[0].cfg.layer
    autocast = autocast or nullcontext()
    full = any(m.needs_suffix for m in members)
    for batch in micro_batches:
        if model is None:
            clean = CleanPass(batch, None, [], None)
        else:
            with autocast:
                clean = clean_pass(model, batch, layer, full=full)
        for m in members:
            m.micro_step(model, clean, step, len(micro_batches), log, autocast)
    for m in members:
        m.optimizer_step(log)


def _run_pack(cfgs: list[CellConfig], out_dirs: list, should_stop, progress: bool) -> list[str]:
    cfg = cfgs[0]
    device = resolve_device(cfg.device)
    if device.type == "cuda":  # TF32 for the fp32 matmuls that remain (autocast or not)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cfg.source == "synthetic":
        model, d_in, n_layers = None, cfg.synthetic.d, 0
        stream = SyntheticStream(cfg.synthetic, cfg.seed)

        def make_eval_stream():
            return SyntheticStream(cfg.synthetic, cfg.seed + cfg.data.eval_seed_offset)

        _save_truth(stream.truth, Path(out_dirs[0]).parent)
    else:
        model = load_model(cfg.model, device)
        d_in, n_layers = model.cfg.d_model, model.cfg.n_layers
        for c in cfgs:
            check_layer(c, n_layers)
        stream = TokenStream(cfg.data, model.tokenizer, cfg.seed, cfg.data.split)

        def make_eval_stream():
            return eval_stream(cfg.data, model.tokenizer, cfg.seed)

    evs = make_eval_stream()
    members = [Member(c, d, d_in, n_layers, device)
               for c, d in zip(cfgs, out_dirs, strict=True)]
    for m in members:
        m.resume()
    first = min(members, key=lambda m: m.step)
    if first.data_state is not None:
        stream.load_state_dict(first.data_state)
    eval_batches = [evs.next_batch(cfg.eval.batch_size).to(device)
                    for _ in range(cfg.eval.n_batches)]
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                if cfg.dtype == "bfloat16" else nullcontext())
    runs = {id(m): _wandb_run(m.cfg, m.paths.root) for m in members}
    failures: dict[str, BaseException] = {}
    o, n_steps = cfg.optim, cfg.optim.n_steps
    eval_every = max(1, cfg.eval.every_samples // o.samples_per_step)

    def live() -> list[Member]:
        return [m for m in members if str(m.paths.root) not in failures]

    def guarded(m: Member, fn: Callable[[], None]) -> None:
        try:
            fn()
        except NonFiniteLossError as e:
            failures[str(m.paths.root)] = e

    def run_eval(ms: list[Member]) -> list[list[dict[str, float]]]:
        """Per member, the eval of each of its SAEs."""
        saes = [s for m in ms for s in m.saes]
        for s in saes:
            s.eval()
        if model is None:
            flat = evaluate_synthetic(saes, eval_batches)
            for values, s in zip(flat, saes, strict=True):
                values.update(truth_metrics(s.dict_elements.detach(), stream.truth))
        else:
            with autocast:
                flat = evaluate_pack(model, saes, cfg.layer, eval_batches)
        for s in saes:
            s.train()
        out, i = [], 0
        for m in ms:
            out.append(flat[i:i + len(m.saes)])
            i += len(m.saes)
        return out

    step = first.step
    name = Path(out_dirs[0]).name + (f" +{len(members) - 1}" if len(members) > 1 else "")
    bar = tqdm(total=n_steps, initial=step, disable=not progress, mininterval=2, desc=name,
               dynamic_ncols=True)
    while step < n_steps:
        active = [m for m in live() if m.step == step]  # the others wait for their step
        for m in active:
            if m.data_state is not None and m.data_state != stream.state_dict():
                raise RuntimeError(f"{m.paths.root}: its checkpoint's data position differs "
                                   "from the pack's at the same step; is it in the right pack?")
            m.data_state = None
        if should_stop is not None and should_stop():
            data = stream.state_dict()
            for m in active:
                guarded(m, lambda m=m, data=data: m.save(data))
            bar.close()
            if failures:
                raise MemberFailed(failures)
            return ["interrupted"] * len(members)
        t0 = time.perf_counter()
        is_log_step = step % cfg.eval.log_every_steps == 0 or step == n_steps - 1
        is_eval_step = step > 0 and step % eval_every == 0
        is_ckpt_step = (step + 1) % cfg.eval.checkpoint_every_steps == 0
        batches = [stream.next_batch(o.batch_size).to(device) for _ in range(o.grad_accum_steps)]
        if active:
            pack_step(model, active, batches, step, is_log_step, autocast)
            if is_log_step:
                for m in active:
                    guarded(m, m.check_finite)
        active = [m for m in active if str(m.paths.root) not in failures]
        if is_eval_step and active:
            for m, metrics in zip(active, run_eval(active), strict=True):
                m.record_eval(step, metrics)
        for m in active:
            m.train_time_s += (time.perf_counter() - t0) / len(active)
        step += 1
        if is_ckpt_step and step < n_steps:
            data = stream.state_dict()
            for m in active:
                guarded(m, lambda m=m, data=data: m.save(data))
        if is_log_step and active:
            values = active[0].last_train_values
            bar.set_postfix(loss=f"{values['loss']:.4g}", l0=f"{values['l0']:.1f}")
            for m in active:
                if runs[id(m)] is not None:
                    runs[id(m)].log(m.last_train_values, step=step - 1)
        bar.update(1)
    bar.close()

    done = live()
    if done:
        _alive_pass(model, done, cfg, make_eval_stream(), device, autocast)
        data = stream.state_dict()
        for m, metrics in zip(done, run_eval(done), strict=True):
            final = m.record_eval(step, metrics)
            guarded(m, lambda m=m, final=final, data=data: m.finish(data, final))
            if runs[id(m)] is not None:
                runs[id(m)].summary.update(final)
                runs[id(m)].finish()
    if failures:
        raise MemberFailed(failures)
    return ["done"] * len(members)


@torch.no_grad()
def _alive_pass(model, members: list[Member], cfg: CellConfig, evs, device, autocast) -> None:
    """Which dictionary elements fire on `eval.alive_pass_tokens` tokens of the eval stream
    (from its start), per SAE: `member.alive_mask`, (n_saes, n_dict) bool."""
    for m in members:
        m.alive_mask = torch.zeros(len(m.saes), m.sae.n_dict, dtype=torch.bool, device=device)
    for _ in range(cfg.alive_pass_batches):
        batch = evs.next_batch(cfg.eval.batch_size).to(device)
        with autocast:
            resid = batch if model is None else clean_pass(model, batch, cfg.layer,
                                                           full=False).resid
            for m in members:
                for i, sae in enumerate(m.saes):
                    c = sae.encode(resid)
                    m.alive_mask[i] |= (c.reshape(-1, c.shape[-1]) > 0).any(0)


def _save_truth(truth: torch.Tensor, grid_dir: Path) -> None:
    """The ground-truth dictionary beside the grid (`_truth/<sha>.npy`), so anyone can
    re-check the recovery numbers; the same truth is written once."""
    arr = truth.numpy()
    path = grid_dir / "_truth" / f"{hashlib.sha256(arr.tobytes()).hexdigest()[:12]}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)


def _wandb_run(cfg: CellConfig, out_dir: Path):
    """A wandb run only when asked for (`offline`/`online`); never needed to train."""
    if cfg.wandb.mode == "disabled":
        return None
    import wandb

    return wandb.init(project=cfg.wandb.project, mode=cfg.wandb.mode, dir=str(out_dir),
                      id=out_dir.name.replace("=", "-")[:64], resume="allow", name=out_dir.name,
                      config=cfg.to_dict(), reinit="create_new")
