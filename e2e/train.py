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
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from e2e.config import CellConfig, ConfigError, check_packable, normalized
from e2e.io import atomic_write_text, cell_lock, cell_paths
from e2e.member import Member, NonFiniteLossError, lr_factor
from e2e.model import CleanPass, clean_pass
from e2e.source import (
    alive_masks,
    autocast_for,
    eval_batches,
    evaluate_dictionaries,
    open_source,
    resolve_device,
    wandb_run,
)

__all__ = ["train", "train_pack", "pack_step", "NonFiniteLossError", "MemberFailed",
           "lr_factor"]


class MemberFailed(RuntimeError):
    """Some members of a pack failed (the others finished or checkpointed first)."""

    def __init__(self, failures: dict[str, BaseException]):
        self.failures = failures
        super().__init__("; ".join(f"{Path(d).name}: {e}" for d, e in failures.items()))


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
            elif normalized(CellConfig.from_json(paths.config.read_text())) != normalized(
                    cfgs[i]):
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
    if cfg.loss.setting == "ksvd":  # a ksvd cell is always a pack of one (pack_key)
        from e2e.ksvd_fit import fit

        return [fit(cfg, out_dirs[0], should_stop, progress)]
    device = resolve_device(cfg.device)
    source = open_source(cfgs, device, Path(out_dirs[0]).parent)
    model, stream = source.model, source.stream
    members = [Member(c, d, source.d_in, source.n_layers, device)
               for c, d in zip(cfgs, out_dirs, strict=True)]
    for m in members:
        m.resume()
    first = min(members, key=lambda m: m.step)
    if first.data_state is not None:
        stream.load_state_dict(first.data_state)
    evals = eval_batches(source, cfg, device)
    autocast = autocast_for(cfg, device)
    runs = {id(m): wandb_run(m.cfg, m.paths.root) for m in members}
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
        flat = evaluate_dictionaries(source, [s for m in ms for s in m.saes], cfg.layer,
                                     evals, autocast)
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
        masks = alive_masks(source, [s for m in done for s in m.saes], cfg, device, autocast)
        for m in done:
            m.alive_mask = torch.stack([masks.pop(0) for _ in m.saes])
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


