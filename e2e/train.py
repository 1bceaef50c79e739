"""`train(cfg, out_dir)`: trains one cell's SAE, or resumes it, or returns at once if it is done.

Outputs in `out_dir` (names from `e2e.io.cell_paths`): config.json, checkpoint.pt, metrics.h5,
sae/ (SAELens format) and DONE, written last.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from e2e.config import CellConfig, ConfigError, OptimConfig
from e2e.data import TokenStream, eval_stream
from e2e.io import atomic_path, atomic_write_text, cell_paths
from e2e.losses import loss_coeffs, setting_loss
from e2e.metrics import AliveTracker, evaluate, l0
from e2e.model import clean_pass, load_model, patched_pass
from e2e.sae import SAE, n_dict_for, save_saelens
from e2e.store import write_metrics


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the cell stops and is never marked done."""


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Linear warmup from 0, then cosine decay to `min_lr_factor` at the last step."""
    warmup = cfg.warmup_samples // cfg.samples_per_step
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.n_steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_factor + (1 - cfg.min_lr_factor) * cosine


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_layer(cfg: CellConfig, n_layers: int) -> None:
    if cfg.layer >= n_layers:
        raise ConfigError(f"layer={cfg.layer} is invalid: the model has {n_layers} layers")
    if cfg.loss.setting == "e2e_ds" and cfg.layer >= n_layers - 1:
        raise ConfigError(f"layer={cfg.layer} is invalid for e2e_ds: no later resid_pre exists")


class TrainState:
    """Everything a resumed run needs besides the config; saved in one atomic checkpoint."""

    def __init__(self, sae, opt, sched, stream, alive):
        self.sae, self.opt, self.sched, self.stream, self.alive = sae, opt, sched, stream, alive
        self.step = 0
        self.samples_seen = 0
        self.train_time_s = 0.0
        self.grad_norm_sum, self.grad_norm_count = 0.0, 0
        self.train_log: dict[str, list[float]] = {}
        self.eval_log: dict[str, list[float]] = {}

    def state_dict(self) -> dict:
        return {
            "sae": self.sae.state_dict(), "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(), "data": self.stream.state_dict(),
            "alive": self.alive.state_dict(), "rng": torch.get_rng_state(),
            "step": self.step, "samples_seen": self.samples_seen,
            "train_time_s": self.train_time_s,
            "grad_norm": [self.grad_norm_sum, self.grad_norm_count],
            "train_log": self.train_log, "eval_log": self.eval_log,
        }

    def load_state_dict(self, s: dict) -> None:
        self.sae.load_state_dict(s["sae"])
        self.opt.load_state_dict(s["opt"])
        self.sched.load_state_dict(s["sched"])
        self.stream.load_state_dict(s["data"])
        self.alive.load_state_dict(s["alive"])
        torch.set_rng_state(s["rng"])
        self.step, self.samples_seen = s["step"], s["samples_seen"]
        self.train_time_s = s["train_time_s"]
        self.grad_norm_sum, self.grad_norm_count = s["grad_norm"]
        self.train_log, self.eval_log = s["train_log"], s["eval_log"]

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)


def _append(log: dict[str, list[float]], step: int, values: dict[str, float]) -> None:
    for k, v in {"step": float(step), **values}.items():
        log.setdefault(k, []).append(float(v))


def train(cfg: CellConfig, out_dir: Path | str, should_stop: Callable[[], bool] | None = None,
          progress: bool = True) -> str:
    """Trains (or resumes) the cell; returns "done", or "interrupted" if `should_stop()` fired.

    `should_stop` is polled between optimizer steps; when it returns True the state is
    checkpointed and the function returns, so a preempted job can requeue and resume exactly.
    """
    paths = cell_paths(out_dir)
    if paths.done.exists():
        return "done"
    paths.root.mkdir(parents=True, exist_ok=True)
    if not paths.config.exists():
        atomic_write_text(paths.config, cfg.to_json())
    elif CellConfig.from_json(paths.config.read_text()) != cfg:
        raise ConfigError(f"{paths.config} holds a different config than the one given")

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model, device)
    check_layer(cfg, model.cfg.n_layers)
    d_in = model.cfg.d_model
    coeffs = loss_coeffs(cfg.loss, cfg.layer, model.cfg.n_layers)
    sae = SAE(d_in, n_dict_for(d_in, cfg.sae.dict_size_to_input_ratio)).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.optim.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.optim))
    stream = TokenStream(cfg.data, model.tokenizer, cfg.seed, cfg.data.split)
    state = TrainState(sae, opt, sched, stream, AliveTracker(sae.n_dict,
                                                             cfg.eval.alive_window_tokens))
    if paths.checkpoint.exists():
        state.load_state_dict(torch.load(paths.checkpoint, weights_only=True,
                                         map_location="cpu"))
        sae.to(device)
    evs = eval_stream(cfg.data, model.tokenizer, cfg.seed)
    n_eval_batches = max(1, cfg.eval.n_samples // cfg.eval.batch_size)
    eval_batches = [evs.next_batch(cfg.eval.batch_size).to(device) for _ in range(n_eval_batches)]
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                if cfg.dtype == "bfloat16" else nullcontext())
    run = _wandb_run(cfg, paths.root)
    o, n_steps = cfg.optim, cfg.optim.n_steps
    eval_every = max(1, cfg.eval.every_samples // o.samples_per_step)

    def run_eval() -> dict[str, float]:
        sae.eval()
        with autocast:
            metrics = evaluate(model, sae, cfg.layer, eval_batches)
        sae.train()
        metrics["alive_dict_elements"] = state.alive.alive
        return metrics

    def flush(final_eval: dict[str, float] | None) -> None:
        gn = state.grad_norm_sum / max(1, state.grad_norm_count)
        final = None if final_eval is None else {**final_eval, "grad_norm": gn}
        write_metrics(paths.metrics, config_json=cfg.to_json(), train=state.train_log,
                      eval_history=state.eval_log, final_eval=final,
                      attrs={"train_time_s": state.train_time_s, "step": state.step,
                             "n_steps": n_steps, "samples_seen": state.samples_seen})

    bar = tqdm(total=n_steps, initial=state.step, disable=not progress, mininterval=2,
               desc=paths.root.name, dynamic_ncols=True)
    while state.step < n_steps:
        if should_stop is not None and should_stop():
            state.save(paths.checkpoint)
            flush(None)
            bar.close()
            return "interrupted"
        t0 = time.perf_counter()
        step = state.step
        is_log_step = step % cfg.eval.log_every_steps == 0 or step == n_steps - 1
        is_eval_step = step > 0 and step % eval_every == 0
        is_ckpt_step = (step + 1) % cfg.eval.checkpoint_every_steps == 0

        terms_sum: dict[str, float] = {}
        for _ in range(o.grad_accum_steps):
            tokens = stream.next_batch(o.batch_size).to(device)
            with autocast:
                loss, terms, c = micro_step_loss(model, sae, cfg, coeffs, tokens)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"non-finite loss {loss.item()} at step {step}")
            (loss / o.grad_accum_steps).backward()
            state.alive.update(c)
            for k, v in {"loss": loss, **terms, "l0": l0(c)}.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach()) / o.grad_accum_steps
        grad_norm = float(torch.nn.utils.clip_grad_norm_(sae.parameters(), o.max_grad_norm))
        lr = sched.get_last_lr()[0]
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        state.step += 1
        state.samples_seen += o.samples_per_step
        if state.samples_seen > cfg.eval.grad_norm_after_samples or n_steps == 1:
            state.grad_norm_sum += grad_norm
            state.grad_norm_count += 1
        if is_log_step:
            values = {**terms_sum, "grad_norm": grad_norm, "lr": lr,
                      "alive_dict_elements": state.alive.alive,
                      "tokens_seen": state.samples_seen * cfg.data.context_length}
            _append(state.train_log, step, values)
            bar.set_postfix(loss=f"{terms_sum['loss']:.4g}", l0=f"{terms_sum['l0']:.1f}")
            if run is not None:
                run.log(values, step=step)
        if is_eval_step:
            _append(state.eval_log, step, run_eval())
        state.train_time_s += time.perf_counter() - t0
        if is_ckpt_step and state.step < n_steps:
            state.save(paths.checkpoint)
            flush(None)
        bar.update(1)
    bar.close()

    final = run_eval()
    _append(state.eval_log, state.step, final)
    state.save(paths.checkpoint)
    save_saelens(sae, paths.sae, {
        "model_name": cfg.model.name_or_path, "hook_name": cfg.hook_name,
        "hook_layer": cfg.layer, "context_size": cfg.data.context_length,
        "dataset_path": cfg.data.dataset, "setting": cfg.loss.setting,
        "sparsity_coeff": cfg.loss.sparsity_coeff})
    flush(final)
    if run is not None:
        run.summary.update(final)
        run.finish()
    atomic_write_text(paths.done, f"step {state.step}\n")
    return "done"


def micro_step_loss(model, sae: SAE, cfg: CellConfig, coeffs, tokens: torch.Tensor):
    """Loss of one micro-batch; the clean model runs without grad, only as far as needed."""
    needs_suffix = coeffs.kl > 0 or coeffs.downstream > 0
    clean = clean_pass(model, tokens, cfg.layer, full=needs_suffix)
    x_hat, c = sae(clean.resid)
    logits_sae, later_sae = (patched_pass(model, x_hat, cfg.layer) if needs_suffix
                             else (None, None))
    loss, terms = setting_loss(coeffs, p=cfg.loss.sparsity_p, x=clean.resid, x_hat=x_hat, c=c,
                               logits_orig=clean.logits, logits_sae=logits_sae,
                               resids_orig=clean.later_resids, resids_sae=later_sae)
    return loss, terms, c


def _wandb_run(cfg: CellConfig, out_dir: Path):
    """A wandb run only when asked for (`offline`/`online`); never needed to train."""
    if cfg.wandb.mode == "disabled":
        return None
    import wandb

    return wandb.init(project=cfg.wandb.project, mode=cfg.wandb.mode, dir=str(out_dir),
                      id=out_dir.name.replace("=", "-")[:64], resume="allow", name=out_dir.name,
                      config=cfg.to_dict())
