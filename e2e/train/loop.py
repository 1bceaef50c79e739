"""`train(cfg, out_dir)` and `train_pack(cfgs, out_dirs)`: train cells, resume them, or return.

A pack is several cells that differ only in their loss (setting, λ): the same model, layer,
data, seed and batch schedule, so they see the same token batches. The frozen model's clean
pass runs once per batch for the whole pack; each member (`e2e.train.member.Member`) then runs
its own SAE, patched suffix, loss, backward and optimizer. A single cell is a pack of one. Every
member keeps its own folder (names from `e2e.io.cell_paths`): config.json, checkpoint.pt,
metrics.h5, sae/ (SAELens format) and DONE, written last; each folder is locked while it trains.
The fitting routine comes from the cells' kind (`CellConfig.kind`, `FITTERS`): SAE packs here,
DB-KSVD cells in `e2e.ksvd.fit`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from e2e.config import CellConfig, ConfigError
from e2e.data.source import (
    Source,
    alive_masks,
    eval_batches,
    evaluate_dictionaries,
    open_source,
)
from e2e.io import atomic_write_text, cell_paths, check_folder_config
from e2e.kernels.chip import autocast_for, train_dtype
from e2e.kernels.heap import keep_freed_heap
from e2e.ksvd.fit import fit as fit_ksvd
from e2e.model import (
    CleanPass,
    Positions,
    clean_pass,
    passes_compiled,
    resolve_device,
    traced_for,
)
from e2e.store import wandb_run
from e2e.train.cost import part_params
from e2e.train.lock import CellBusyError, cell_lock
from e2e.train.member import Member, NonFiniteLossError, lr_factor
from e2e.typed import changed

__all__ = ["train", "train_pack", "pack_step", "pack_key", "check_packable",
           "NonFiniteLossError", "MemberFailed", "lr_factor"]


class MemberFailed(RuntimeError):
    """Some members of a pack failed (the others finished or checkpointed first)."""

    def __init__(self, failures: dict[str, BaseException]):
        self.failures = failures
        super().__init__("; ".join(f"{Path(d).name}: {e}" for d, e in failures.items()))


def pack_key(cfg: CellConfig) -> str:
    """Cells with the same key differ only in their loss and can train as one pack: the same
    model, layer, data, seed and batch schedule, so they see the same token batches. A ksvd
    cell has no batch schedule to share: it runs alone."""
    if cfg.kind == "ksvd":
        return "ksvd:" + cfg.to_json()
    d = cfg.to_dict()
    d.pop("loss")
    d.pop("init")  # each member loads its own parent
    return json.dumps(d, sort_keys=True)


def check_packable(cfgs: list[CellConfig]) -> None:
    """Raises ConfigError naming the fields (other than loss) in which the cells differ."""
    if len(cfgs) > 1 and any(c.kind == "ksvd" for c in cfgs):
        raise ConfigError("a ksvd cell runs alone: it cannot be in a pack")
    for cfg in cfgs[1:]:
        diff = [k for k in changed(cfgs[0].to_dict(), cfg.to_dict())
                if not k.startswith(("loss.", "init."))]
        if diff:
            raise ConfigError(f"cells of one pack may differ only in loss and init; these "
                              f"differ in {diff}")


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
               should_stop: Callable[[], bool] | None = None, progress: bool = True,
               lock_wait_s: float = 0.0) -> list[str]:
    """Trains (or resumes) the cells as one pack; a status per cell, as `train` returns.

    Members that finished earlier are skipped; members whose checkpoints are at different steps
    (a pack killed mid-checkpoint) resume from the earliest, the others waiting until the pack
    reaches their step, so every member ends exactly as if it had run alone. A member whose
    loss goes non-finite stops; the others go on, then `MemberFailed` names it. For the rest
    of the process, glibc keeps freed heap memory for reuse (`e2e.kernels.heap.keep_freed_heap`).
    A member another process trains is refused (CellBusyError) after `lock_wait_s` seconds.
    """
    if not cfgs or len(cfgs) != len(out_dirs):
        raise ValueError("train_pack needs one output folder per config")
    check_packable(cfgs)
    keep_freed_heap()  # each step allocates the same tensors again: no page faults for them
    with contextlib.ExitStack() as locks:
        todo, busy = [], []
        for i, d in enumerate(out_dirs):
            paths = cell_paths(d)
            if paths.done.exists():
                continue
            paths.root.mkdir(parents=True, exist_ok=True)
            try:
                locks.enter_context(cell_lock(paths.root, lock_wait_s))
            except CellBusyError as e:  # every member held elsewhere is named, then refused
                busy.append(str(e))
                continue
            if paths.done.exists():  # finished by another process just before we locked it
                continue
            if not paths.config.exists():
                atomic_write_text(paths.config, cfgs[i].to_json())
            else:
                check_folder_config(paths.config, cfgs[i])
            todo.append(i)
        if busy:  # a second submission into the root: the first trains them (one line each)
            raise CellBusyError("\n".join(busy))
        status = ["done"] * len(cfgs)
        if todo:
            fitter = FITTERS[cfgs[0].kind]
            result = fitter([cfgs[i] for i in todo], [out_dirs[i] for i in todo], should_stop,
                            progress)
            for i, s in zip(todo, result, strict=True):
                status[i] = s
        return status


def pack_step(model, members: list[Member], micro_batches: list[torch.Tensor], step: int,
              log: bool, autocast=None, positions: Positions | None = None) -> None:
    """One optimizer step of every member on the same micro-batches; the clean model runs
    once per micro-batch for all of them, only as far as some member needs, and the members
    see its kept `positions` only. Without a model (`model=None`, synthetic data) the
    micro-batches are the activations themselves."""
    cfg = members[0].cfg
    autocast = autocast or nullcontext()
    full = any(m.needs_suffix for m in members)
    positions = positions or Positions(cfg.data.skip_positions)
    for batch in micro_batches:
        if model is None:
            clean = CleanPass(batch, None, [], None)
        else:
            keep = positions.keep(batch)
            if keep is not None and not keep.any():
                raise ConfigError(f"data.exclude_tokens={cfg.data.exclude_tokens} leaves no "
                                  "position of a training batch to train on")
            with autocast:
                clean = (traced_for(model).clean_pass(batch, cfg.layer, full, positions.skip,
                                                      keep, positions.norm_multiple)
                         if passes_compiled(cfg) else
                         clean_pass(model, batch, cfg.layer, full=full, logits=False,
                                    skip=positions.skip, keep=keep,
                                    norm_multiple=positions.norm_multiple))
        for m in members:
            m.micro_step(model, clean, step, len(micro_batches), log, autocast)
    for m in members:
        m.optimizer_step(log)


def pack_dtype(members: list[Member], here: str) -> str:
    """The pack's training dtype: its resumed members' (every checkpoint records the one it
    was trained in), else `here` ("auto" resolved on this machine). A cell started under bf16
    on an AVX512-BF16 node and requeued onto an AVX2 node goes on in bf16, saying so once;
    members resumed in different dtypes are a ConfigError. Every member takes the pack's."""
    resumed = {m.train_dtype for m in members if m.paths.checkpoint.exists()}
    if len(resumed) > 1:
        raise ConfigError(f"{members[0].paths.root.parent}: the pack's cells were trained in "
                          f"different dtypes ({', '.join(sorted(resumed))}); run them apart")
    dtype = resumed.pop() if resumed else here
    if dtype != here:
        print(f"resuming in {dtype}, the dtype these cells started in; dtype=auto would be "
              f"{here} on this machine", file=sys.stderr, flush=True)
    for m in members:
        m.train_dtype = dtype
    return dtype


class _PackRun:
    """One run of a pack of SAE cells: its source, members, eval batches and failures."""

    def __init__(self, cfgs: list[CellConfig], out_dirs: list):
        self.cfg = cfg = cfgs[0]
        self.device = resolve_device(cfg.device)
        self.source: Source = open_source(cfgs, self.device, Path(out_dirs[0]).parent)
        self.members = [Member(c, d, self.source.d_in, self.source.n_layers, self.device)
                        for c, d in zip(cfgs, out_dirs, strict=True)]
        params = part_params(self.source.model, cfg.layer)
        for m in self.members:
            m.part_params = params
            m.resume()
        self.first = min(self.members, key=lambda m: m.step)
        if self.first.data_state is not None:
            self.source.stream.load_state_dict(self.first.data_state)
        self.evals = eval_batches(self.source, cfg, self.device)
        self.train_dtype = pack_dtype(self.members, train_dtype(cfg.dtype, self.device))
        self.autocast = autocast_for(self.train_dtype, self.device)
        self.runs = {id(m): wandb_run(m.cfg, m.paths.root) for m in self.members}
        self.failures: dict[str, BaseException] = {}

    def live(self) -> list[Member]:
        return [m for m in self.members if str(m.paths.root) not in self.failures]

    def guarded(self, m: Member, fn: Callable[[], None]) -> None:
        try:
            fn()
        except NonFiniteLossError as e:
            self.failures[str(m.paths.root)] = e

    def save(self, ms: list[Member]) -> None:
        data = self.source.stream.state_dict()
        for m in ms:
            self.guarded(m, lambda m=m, data=data: m.save(data))

    def run_eval(self, ms: list[Member]) -> list[list[dict[str, float]]]:
        """Per member, the eval of each of its SAEs."""
        flat = evaluate_dictionaries(self.source, [s for m in ms for s in m.saes],
                                     self.cfg.layer, self.evals)
        out, i = [], 0
        for m in ms:
            out.append(flat[i:i + len(m.saes)])
            i += len(m.saes)
        return out

    def waiting_check(self, step: int) -> list[Member]:
        """The members at `step` (the others wait for it), checked against the stream."""
        active = [m for m in self.live() if m.step == step]
        for m in active:
            if m.data_state is not None and m.data_state != self.source.stream.state_dict():
                raise RuntimeError(f"{m.paths.root}: its checkpoint's data position differs "
                                   "from the pack's at the same step; is it in the right pack?")
            m.data_state = None
        return active

    def step(self, step: int, active: list[Member]) -> list[Member]:
        """One optimizer step of the active members (eval and checkpoint when due); returns
        those still active."""
        cfg, o, n_steps = self.cfg, self.cfg.optim, self.cfg.optim.n_steps
        eval_every = max(1, cfg.eval.every_samples // o.samples_per_step)
        t0 = time.perf_counter()
        is_log_step = step % cfg.eval.log_every_steps == 0 or step == n_steps - 1
        is_eval_step = step > 0 and step % eval_every == 0
        is_ckpt_step = (step + 1) % cfg.eval.checkpoint_every_steps == 0
        starting = [m for m in active if m.needs_start_eval]
        if starting:  # before the first update: a warm start's curve begins at its parent
            for m, metrics in zip(starting, self.run_eval(starting), strict=True):
                m.set_kl_scale(m.record_eval(0, metrics))
        batches = [self.source.stream.next_batch(o.batch_size).to(self.device)
                   for _ in range(o.grad_accum_steps)]
        if active:
            pack_step(self.source.model, active, batches, step, is_log_step, self.autocast,
                      self.source.positions)
            if is_log_step:
                for m in active:
                    self.guarded(m, m.check_finite)
        active = [m for m in active if str(m.paths.root) not in self.failures]
        if is_eval_step and active:
            for m, metrics in zip(active, self.run_eval(active), strict=True):
                m.record_eval(step, metrics)
        for m in active:
            m.train_time_s += (time.perf_counter() - t0) / len(active)
        if is_ckpt_step and step + 1 < n_steps:
            self.save(active)
        if is_log_step and active:
            for m in active:
                if self.runs[id(m)] is not None:
                    self.runs[id(m)].log(m.last_train_values, step=step)
        return active if is_log_step else []

    def finish(self) -> None:
        """The alive pass, the final eval, and each live member's files (DONE last)."""
        done = self.live()
        if not done:
            return
        masks = alive_masks(self.source, [s for m in done for s in m.saes], self.cfg,
                            self.device)
        for m in done:
            m.alive_mask = torch.stack([masks.pop(0) for _ in m.saes])
        data = self.source.stream.state_dict()
        step = self.cfg.optim.n_steps
        for m, metrics in zip(done, self.run_eval(done), strict=True):
            final = m.record_eval(step, metrics)
            self.guarded(m, lambda m=m, final=final, data=data: m.finish(
                data, final, self.source.positions.exclude))
            if self.runs[id(m)] is not None:
                self.runs[id(m)].summary.update(final)
                self.runs[id(m)].finish()


def fit_saes(cfgs: list[CellConfig], out_dirs: list, should_stop, progress: bool) -> list[str]:
    """Trains (or resumes) a pack of SAE cells; a status per cell."""
    run = _PackRun(cfgs, out_dirs)
    step, n_steps = run.first.step, run.cfg.optim.n_steps
    name = Path(out_dirs[0]).name + (f" +{len(cfgs) - 1}" if len(cfgs) > 1 else "")
    bar = tqdm(total=n_steps, initial=step, disable=not progress, mininterval=2, desc=name,
               dynamic_ncols=True)
    while step < n_steps:
        active = run.waiting_check(step)
        if should_stop is not None and should_stop():
            run.save(active)
            bar.close()
            if run.failures:
                raise MemberFailed(run.failures)
            return ["interrupted"] * len(cfgs)
        logged = run.step(step, active)
        step += 1
        if logged:
            values = logged[0].last_train_values
            bar.set_postfix(loss=f"{values['loss']:.4g}", l0=f"{values['l0']:.1f}")
        bar.update(1)
    bar.close()
    run.finish()
    if run.failures:
        raise MemberFailed(run.failures)
    return ["done"] * len(cfgs)


# The fitting routine of each kind of cell (`CellConfig.kind`).
FITTERS: dict[str, Callable[..., list[str]]] = {"sae": fit_saes, "ksvd": fit_ksvd}
