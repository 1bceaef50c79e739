"""One member of a pack: a cell's dictionary with its optimizer, schedule, logs and files.

Everything a resumed member needs besides its config is in `state_dict()`, saved atomically to
the member's own `checkpoint.pt`; the stream position saved there is the pack's at the member's
step, so a cell trained in a pack can resume alone and the other way round.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from e2e.config import CellConfig, OptimConfig
from e2e.io import atomic_path, atomic_write_text, cell_paths
from e2e.losses import loss_coeffs, setting_loss
from e2e.metrics import AliveTracker, l0
from e2e.model import CleanPass, patched_pass
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


def make_optimizer(params, lr: float) -> torch.optim.Adam:
    # Fused Adam: one kernel over all parameters, on CUDA and on CPU (where it took 22 ms
    # instead of foreach's 296 ms for a 46,080 x 768 dictionary's 35M weights).
    return torch.optim.Adam(params, lr=lr, fused=True)


def _append(log: dict[str, list[float]], step: int, values: dict[str, float]) -> None:
    for k, v in {"step": float(step), **values}.items():
        log.setdefault(k, []).append(float(v))


class Member:
    """A cell's SAE, Adam, LR schedule, alive tracker, step counters and logs."""

    def __init__(self, cfg: CellConfig, out_dir: Path | str, d_in: int, n_layers: int,
                 device: torch.device):
        self.cfg, self.paths, self.device = cfg, cell_paths(out_dir), device
        self.coeffs = loss_coeffs(cfg.loss, cfg.layer, n_layers)
        self.needs_suffix = self.coeffs.kl > 0 or self.coeffs.downstream > 0
        # The init depends on the seed alone, not on what ran before in the process (model
        # loading, other members), so a packed cell starts exactly as it would alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.sae = SAE(d_in, n_dict_for(d_in, cfg.sae.dict_size_to_input_ratio))
        self.sae.to(device)
        self.opt = make_optimizer(self.sae.parameters(), cfg.optim.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt,
                                                       lambda s: lr_factor(s, cfg.optim))
        self.alive = AliveTracker(self.sae.n_dict, cfg.eval.alive_window_tokens, device)
        self.step = self.samples_seen = 0
        self.train_time_s = 0.0
        # Tensors, so a step never waits for the host; read on log steps only.
        self.grad_norm_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_norm_count = 0
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.train_log: dict[str, list[float]] = {}
        self.eval_log: dict[str, list[float]] = {}
        self.data_state: dict | None = None  # the stream position at `self.step`
        self._terms: dict[str, torch.Tensor] = {}

    # -- one step ----------------------------------------------------------------------------
    def micro_step(self, model, clean: CleanPass, step: int, accum: int, log: bool,
                   autocast) -> None:
        """Forward (under `autocast`), loss and backward of one micro-batch; gradients
        accumulate in the SAE."""
        cfg = self.cfg
        with autocast:
            x_hat, c = self.sae(clean.resid)
            logits_sae, later_sae = (patched_pass(model, x_hat, cfg.layer) if self.needs_suffix
                                     else (None, None))
            loss, terms = setting_loss(self.coeffs, p=cfg.loss.sparsity_p, x=clean.resid,
                                       x_hat=x_hat, c=c, logits_orig=clean.target,
                                       logits_sae=logits_sae, resids_orig=clean.later_resids,
                                       resids_sae=later_sae)
        bad = ~torch.isfinite(loss.detach())
        self.bad_step = torch.where(bad & (self.bad_step < 0), step, self.bad_step)
        (loss / accum).backward()
        self.alive.update(c)
        if log:
            for k, v in {"loss": loss, **terms, "l0": l0(c)}.items():
                self._terms[k] = self._terms.get(k, 0.0) + v.detach().float() / accum

    def optimizer_step(self, log: bool) -> None:
        o = self.cfg.optim
        grad_norm = torch.nn.utils.clip_grad_norm_(self.sae.parameters(), o.max_grad_norm)
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        step = self.step
        self.step += 1
        self.samples_seen += o.samples_per_step
        if self.samples_seen > self.cfg.eval.grad_norm_after_samples or o.n_steps == 1:
            self.grad_norm_sum += grad_norm.detach().double()
            self.grad_norm_count += 1
        if log:
            values = {k: float(v) for k, v in self._terms.items()}
            values.update(grad_norm=float(grad_norm), lr=lr,
                          alive_dict_elements=self.alive.alive,
                          tokens_seen=self.samples_seen * self.cfg.data.context_length)
            _append(self.train_log, step, values)
            self._terms = {}

    def check_finite(self) -> None:
        bad = int(self.bad_step)
        if bad >= 0:
            raise NonFiniteLossError(f"{self.paths.root.name}: non-finite loss at step {bad}")

    def record_eval(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        metrics = {**metrics, "alive_dict_elements": self.alive.alive}
        _append(self.eval_log, step, metrics)
        return metrics

    @property
    def last_train_values(self) -> dict[str, float]:
        return {k: v[-1] for k, v in self.train_log.items()}

    # -- state and files ---------------------------------------------------------------------
    def state_dict(self, data_state: dict) -> dict:
        return {
            "sae": self.sae.state_dict(), "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(), "data": data_state,
            "alive": self.alive.state_dict(), "step": self.step,
            "samples_seen": self.samples_seen, "train_time_s": self.train_time_s,
            "grad_norm": [self.grad_norm_sum.cpu(), self.grad_norm_count],
            "train_log": self.train_log, "eval_log": self.eval_log,
        }

    def load_state_dict(self, s: dict) -> None:
        self.sae.load_state_dict(s["sae"])
        self.opt.load_state_dict(s["opt"])
        self.sched.load_state_dict(s["sched"])
        self.alive.load_state_dict(s["alive"])
        self.data_state = s["data"]
        self.step, self.samples_seen = s["step"], s["samples_seen"]
        self.train_time_s = s["train_time_s"]
        gn_sum, self.grad_norm_count = s["grad_norm"]
        self.grad_norm_sum = torch.as_tensor(gn_sum, dtype=torch.float64).to(self.device)
        self.train_log, self.eval_log = s["train_log"], s["eval_log"]

    def resume(self) -> None:
        if self.paths.checkpoint.exists():
            self.load_state_dict(torch.load(self.paths.checkpoint, weights_only=True,
                                            map_location=self.device))

    def save(self, data_state: dict, final_eval: dict[str, float] | None = None) -> None:
        """Checkpoint, then metrics.h5 (with the final eval scalars once there are some)."""
        self.check_finite()  # a NaN never reaches a checkpoint
        with atomic_path(self.paths.checkpoint) as tmp:
            torch.save(self.state_dict(data_state), tmp)
        gn = float(self.grad_norm_sum) / max(1, self.grad_norm_count)
        final = None if final_eval is None else {**final_eval, "grad_norm": gn}
        write_metrics(self.paths.metrics, config_json=self.cfg.to_json(), train=self.train_log,
                      eval_history=self.eval_log, final_eval=final,
                      attrs={"train_time_s": self.train_time_s, "step": self.step,
                             "n_steps": self.cfg.optim.n_steps,
                             "samples_seen": self.samples_seen})

    def finish(self, data_state: dict, final_eval: dict[str, float]) -> None:
        """Final checkpoint and metrics.h5, sae/, then DONE, last."""
        cfg = self.cfg
        self.save(data_state, final_eval)
        save_saelens(self.sae, self.paths.sae, {
            "model_name": cfg.model.name_or_path, "hook_name": cfg.hook_name,
            "hook_layer": cfg.layer, "context_size": cfg.data.context_length,
            "dataset_path": cfg.data.dataset, "setting": cfg.loss.setting,
            "sparsity_coeff": cfg.loss.sparsity_coeff})
        atomic_write_text(self.paths.done, f"step {self.step}\n")
