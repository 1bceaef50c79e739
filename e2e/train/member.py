"""One member of a pack: a cell's dictionaries with their optimizer, schedule, logs and files.

A cell trains one SAE, or `mfr.n_saes` of them on the same batches (Mutual Feature
Regularization): SAE i starts from seed + 1000 i and has its own gradient clipping; with
`mfr.coeff` > 0 the penalty on the pairs of dictionaries is added once per optimizer step
(it depends on the weights only). Eval values are the mean over the SAEs, with each SAE's own
under `sae<i>/` when there are several.

Everything a resumed member needs besides its config is in `state_dict()`, saved atomically to
the member's own `checkpoint.pt`; the stream position saved there is the pack's at the member's
step, so a cell trained in a pack can resume alone and the other way round.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from e2e.arch.auxk import DeadTracker, auxk_loss
from e2e.arch.build import auxk_k, build_sae
from e2e.config import SIMILARITIES, CellConfig, ConfigError, OptimConfig, n_dict_for
from e2e.io import atomic_path, atomic_write_text, cell_paths, load_checkpoint
from e2e.kernels.chip import train_dtype
from e2e.losses import loss_coeffs, reconstruction_loss, setting_loss
from e2e.metrics import AliveTracker, l0
from e2e.model import CleanPass, patched_pass
from e2e.optim import make_adam, warmup_cosine
from e2e.sae import SAE
from e2e.saelens import cell_meta, save_saelens
from e2e.store import append_row, recorded_dtype, write_metrics
from e2e.train.cost import PARTS, train_flops
from e2e.train.karvonen import L0Controller, rebalance_kl
from e2e.train.mfr import mean_pairwise_similarity, penalty, warmup_weight
from e2e.train.warm import parent_states

SEED_STRIDE = 1000  # SAE i of a cell starts from seed + 1000 i


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the cell stops and is never marked done."""


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Linear warmup from 0 over `warmup_samples`, then cosine decay to `min_lr_factor` at
    the last step."""
    return warmup_cosine(step, cfg.warmup_samples // cfg.samples_per_step, cfg.n_steps,
                         cfg.min_lr_factor)


class Member:
    """A cell's SAEs, Adam, LR schedule, alive trackers, step counters and logs."""

    def __init__(self, cfg: CellConfig, out_dir: Path | str, d_in: int, n_layers: int,
                 device: torch.device):
        self.cfg, self.paths, self.device = cfg, cell_paths(out_dir), device
        self.coeffs = self.base_coeffs = loss_coeffs(cfg.loss, cfg.layer, n_layers)
        self.needs_suffix = self.coeffs.kl > 0 or self.coeffs.downstream > 0
        self.kl_scale: float | None = None  # loss.balance_kl: MSE/KL at step 0
        self.l0ctl = L0Controller(device) if cfg.loss.track_l0 else None
        self.parent_sha256 = ""
        self.train_dtype = train_dtype(cfg.dtype, device)  # a checkpoint's replaces it (resume)
        n_dict = n_dict_for(d_in, cfg.sae.dict_size_to_input_ratio)
        self.saes = []
        for i in range(cfg.mfr.n_saes):
            # The init depends on the seed alone, not on what ran before in the process (model
            # loading, other members), so a packed cell starts exactly as it would alone.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + SEED_STRIDE * i)
                self.saes.append(build_sae(cfg.sae, d_in, n_dict).to(device))
        data, parent_alive = None, None
        if cfg.init.warm:
            states, self.parent_sha256, data, parent_alive = parent_states(
                cfg, self.paths.root.parent, d_in, device)
            for sae, state in zip(self.saes, states, strict=True):
                sae.load_state_dict(state)
        # One Adam over every SAE's parameters is N independent Adams (it is per-parameter);
        # clipping stays per SAE.
        self.opt = make_adam([p for s in self.saes for p in s.parameters()], cfg.optim.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt,
                                                       lambda s: lr_factor(s, cfg.optim))
        self.alives = [AliveTracker(n_dict, cfg.eval.alive_window_tokens, device)
                       for _ in self.saes]
        for alive, state in zip(self.alives, parent_alive or [None] * len(self.alives),
                                strict=True):
            if state:  # a child's alive window goes on from its parent's
                alive.load_state_dict(state)
        # AuxK's dead latents, per SAE (only with sae.auxk_coeff > 0)
        self.deads = [DeadTracker(n_dict, cfg.sae.auxk_dead_tokens, device)
                      for _ in self.saes] if cfg.sae.auxk_coeff else []
        self.k_aux = auxk_k(cfg.sae, d_in)
        self.step = self.samples_seen = 0
        self.train_time_s = 0.0
        self.tokens = dict.fromkeys(PARTS, 0)  # through each part of the model (`cost`)
        self.part_params = (0, 0)  # (prefix, suffix) parameters, set by the pack
        # Tensors, so a step never waits for the host; read on log steps only.
        self.grad_norm_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_norm_count = 0
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.train_log: dict[str, list[float]] = {}
        self.eval_log: dict[str, list[float]] = {}
        # the stream position at `self.step` (a warm start's: where its parent's ended)
        self.data_state: dict | None = data
        self.alive_mask: torch.Tensor | None = None  # set by the post-training alive pass
        self._terms: dict[str, torch.Tensor] = {}

    @property
    def sae(self) -> SAE:
        """The first SAE: the cell's `sae/` (its only one without MFR)."""
        return self.saes[0]

    @property
    def alive(self) -> float:
        """Alive dictionary elements, mean over the SAEs."""
        return sum(a.alive for a in self.alives) / len(self.alives)

    # -- one step ----------------------------------------------------------------------------
    def micro_step(self, model, clean: CleanPass, step: int, accum: int, log: bool,
                   autocast) -> None:
        """Forward (under `autocast`), loss and backward of one micro-batch; gradients
        accumulate in the SAE."""
        n = len(self.saes)
        n_tok, n_all = clean.resid.shape[:-1].numel(), clean.window_tokens  # the SAE's, model's
        self.tokens["prefix"] += n_all
        self.tokens["sae"] += n_tok * n
        if self.needs_suffix:
            self.tokens["suffix_clean"] += n_all
            self.tokens["suffix_patched"] += n_all * n
        for i, (sae, alive) in enumerate(zip(self.saes, self.alives, strict=True)):
            with autocast:
                loss, terms, c = self._loss(model, clean, sae, i)
            bad = ~torch.isfinite(loss.detach())
            self.bad_step = torch.where(bad & (self.bad_step < 0), step, self.bad_step)
            (loss / accum).backward()
            alive.update(c)
            if self.l0ctl:
                self.l0ctl.observe(l0(c), 1 / (accum * n))
            if self.deads:
                self.deads[i].update(c)
            if log:  # logged values are means over the SAEs
                for k, v in {"loss": loss, **terms, "l0": l0(c)}.items():
                    self._terms[k] = self._terms.get(k, 0.0) + v.detach().float() / (accum * n)

    def _loss(self, model, clean: CleanPass, sae: SAE, i: int):
        """(loss, unweighted terms, codes) of SAE `i` on one micro-batch: the setting's loss
        with the architecture's sparsity term, plus each nested reconstruction's terms
        (Matryoshka's prefixes, under `prefix<m>/`) and AuxK's (`auxk`)."""
        cfg, coeffs = self.cfg, self.coeffs
        if self.l0ctl:
            coeffs = replace(coeffs, sparsity=coeffs.sparsity * self.l0ctl.mult)
        coded = sae.train_forward(clean.resid)
        logits_sae, later_sae = (patched_pass(model, clean, coded.x_hat)
                                 if self.needs_suffix else (None, None))
        loss, terms = setting_loss(coeffs, p=cfg.loss.sparsity_p, x=clean.resid,
                                   x_hat=coded.x_hat, c=coded.c, logits_orig=clean.target,
                                   logits_sae=logits_sae, resids_orig=clean.later_resids,
                                   resids_sae=later_sae,
                                   sparsity=sae.sparsity_loss(coded, cfg.loss.sparsity_p))
        if cfg.loss.balance_kl_every_step:
            loss = rebalance_kl(loss, terms, coeffs.kl)
        for name, inner in sae.nested_reconstructions(coded).items():
            logits_in, later_in = (patched_pass(model, clean, inner)
                                   if self.needs_suffix else (None, None))
            if self.needs_suffix:  # one more patched pass of the suffix (`cost`)
                self.tokens["suffix_patched"] += clean.window_tokens
            loss, terms = reconstruction_loss(
                coeffs, loss, terms, x=clean.resid, x_hat=inner,
                logits_orig=clean.target, logits_sae=logits_in,
                resids_orig=clean.later_resids, resids_sae=later_in,
                prefix=f"{name}/")
            if cfg.loss.balance_kl_every_step:
                loss = rebalance_kl(loss, terms, coeffs.kl, f"{name}/")
        if self.deads:
            terms["auxk"] = auxk_loss(clean.resid, coded.x_hat, coded.pre, self.deads[i].dead,
                                      sae.dict_elements, self.k_aux)
            loss = loss + cfg.sae.auxk_coeff * terms["auxk"]
        return loss, terms, coded.c

    def mfr_step(self, log: bool) -> None:
        """Adds the gradient of coeff * w(t) * mean over pairs of (1 - similarity)."""
        m = self.cfg.mfr
        if m.coeff == 0 or len(self.saes) < 2:
            return
        weight = m.coeff * warmup_weight(self.step, m.warmup_steps)
        pen = penalty([s.dict_elements for s in self.saes], m.similarity)
        if weight:
            (weight * pen).backward()
        if log:
            self._terms["mfr_penalty"] = pen.detach()

    def optimizer_step(self, log: bool) -> None:
        o = self.cfg.optim
        self.mfr_step(log)
        grad_norm = sum(torch.nn.utils.clip_grad_norm_(s.parameters(), o.max_grad_norm)
                        for s in self.saes) / len(self.saes)
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        if self.l0ctl:
            self.l0ctl.step()
        step = self.step
        self.step += 1
        self.samples_seen += o.samples_per_step
        if self.samples_seen > self.cfg.eval.grad_norm_after_samples or o.n_steps == 1:
            self.grad_norm_sum += grad_norm.detach().double()
            self.grad_norm_count += 1
        if log:
            values = {k: float(v) for k, v in self._terms.items()}
            if self.l0ctl:
                values["sparsity_coeff"] = self.cfg.loss.sparsity_coeff * float(self.l0ctl.mult)
            values.update(grad_norm=float(grad_norm), lr=lr, alive_dict_elements=self.alive,
                          tokens_seen=self.samples_seen * self.cfg.tokens_per_sample)
            append_row(self.train_log, step, values)
            self._terms = {}

    def check_finite(self) -> None:
        bad = int(self.bad_step)
        if bad >= 0:
            raise NonFiniteLossError(f"{self.paths.root.name}: non-finite loss at step {bad}")

    def record_eval(self, step: int, per_sae: list[dict[str, float]]) -> dict[str, float]:
        """The eval of each SAE (in order) -> the cell's: means under the standard names,
        each SAE's values under `sae<i>/`, and the similarity of the dictionaries."""
        per_sae = [{**m, "alive_dict_elements": a.alive}
                   for m, a in zip(per_sae, self.alives, strict=True)]
        metrics = {k: sum(m[k] for m in per_sae) / len(per_sae) for k in per_sae[0]}
        if len(per_sae) > 1:
            for i, m in enumerate(per_sae):
                metrics.update({f"sae{i}/{k}": v for k, v in m.items()})
            metrics.update(self.similarities())
        append_row(self.eval_log, step, metrics)
        return metrics

    @property
    def needs_start_eval(self) -> bool:
        """An evaluation before the first step: a warm start's curve begins at its parent's
        value, and `loss.balance_kl` measures its scale there."""
        return self.step == 0 and (self.cfg.init.warm or self.cfg.loss.balance_kl
                                   or self.cfg.loss.track_l0)

    def set_kl_scale(self, start_eval: dict[str, float]) -> None:
        """loss.balance_kl: the KL term times MSE/KL of the starting dictionary at the hook
        (eval batches), so it starts equal to the MSE (Karvonen 2025)."""
        if self.l0ctl:
            self.l0ctl.target = start_eval["l0"]
        if self.cfg.loss.balance_kl:
            mse = start_eval[f"mse/{self.cfg.hook_name}"]
            self._scale_kl(mse / max(start_eval["kl_orig_sae"], 1e-12))

    def _scale_kl(self, scale: float) -> None:
        self.kl_scale = scale
        self.coeffs = replace(self.base_coeffs, kl=self.base_coeffs.kl * scale)

    @property
    def flops(self) -> float:
        return train_flops(self.tokens, *self.part_params, 2 * sum(
            s.encoder.weight.numel() for s in self.saes))

    @torch.no_grad()
    def similarities(self) -> dict[str, float]:
        """Mean pairwise similarity of the dictionaries, by each measure; Hungarian only up to
        1,024 elements or when it is the penalty's (10 GPT-2 SAEs of 3,072: 45 matchings of
        several seconds each at every eval)."""
        dicts = [s.dict_elements for s in self.saes]
        cheap = dicts[0].shape[1] <= 1024 or self.cfg.mfr.similarity == "hungarian"
        return {f"mfr_similarity/{name}": float(mean_pairwise_similarity(dicts, name))
                for name in SIMILARITIES if name != "hungarian" or cheap}

    @property
    def last_train_values(self) -> dict[str, float]:
        return {k: v[-1] for k, v in self.train_log.items()}

    # -- state and files ---------------------------------------------------------------------
    def state_dict(self, data_state: dict) -> dict:
        return {
            "saes": [s.state_dict() for s in self.saes], "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(), "data": data_state,
            "alive": [a.state_dict() for a in self.alives], "step": self.step,
            "samples_seen": self.samples_seen, "train_time_s": self.train_time_s,
            "grad_norm": [self.grad_norm_sum.cpu(), self.grad_norm_count],
            "train_log": self.train_log, "eval_log": self.eval_log,
            "tokens": self.tokens, "kl_scale": self.kl_scale,
            **({"l0ctl": self.l0ctl.state_dict()} if self.l0ctl else {}),
            "parent_sha256": self.parent_sha256, "train_dtype": self.train_dtype,
            **({"dead": [d.state_dict() for d in self.deads]} if self.deads else {}),
        }

    def load_state_dict(self, s: dict) -> None:
        for sae, state in zip(self.saes, s["saes"], strict=True):
            sae.load_state_dict(state)
        self.opt.load_state_dict(s["opt"])
        self.sched.load_state_dict(s["sched"])
        for alive, state in zip(self.alives, s["alive"], strict=True):
            alive.load_state_dict(state)
        for dead, state in zip(self.deads, s.get("dead", []), strict=True):
            dead.load_state_dict(state)
        self.data_state = s["data"]
        self.step, self.samples_seen = s["step"], s["samples_seen"]
        self.train_time_s = s["train_time_s"]
        gn_sum, self.grad_norm_count = s["grad_norm"]
        self.grad_norm_sum = torch.as_tensor(gn_sum, dtype=torch.float64).to(self.device)
        self.train_log, self.eval_log = s["train_log"], s["eval_log"]
        self.tokens = s.get("tokens", dict.fromkeys(PARTS, 0))  # older checkpoints: none
        dtype = s.get("train_dtype")  # the one it started in (older checkpoints: metrics.h5's)
        self.train_dtype = dtype or recorded_dtype(self.paths.metrics, self.train_dtype)
        if s.get("kl_scale") is not None:
            self._scale_kl(s["kl_scale"])
        if self.l0ctl:
            self.l0ctl.load_state_dict(s["l0ctl"])
        if s.get("parent_sha256", "") != self.parent_sha256:
            raise ConfigError(f"{self.paths.root}: its parent's weights changed since it "
                              f"started (sha256 {s.get('parent_sha256', '')[:12]} then, "
                              f"{self.parent_sha256[:12]} now); remove the folder to restart")

    def resume(self) -> None:
        if self.paths.checkpoint.exists():
            self.load_state_dict(load_checkpoint(self.paths.checkpoint, self.device))

    def save(self, data_state: dict, final_eval: dict[str, float] | None = None) -> None:
        """Checkpoint, then metrics.h5 (with the final eval scalars once there are some)."""
        self.check_finite()  # a NaN never reaches a checkpoint
        with atomic_path(self.paths.checkpoint, keep_previous=True) as tmp:
            torch.save(self.state_dict(data_state), tmp)
        gn = float(self.grad_norm_sum) / max(1, self.grad_norm_count)
        final = None if final_eval is None else {**final_eval, "grad_norm": gn}
        arrays = {} if self.alive_mask is None or final_eval is None else {
            "alive_mask": self.alive_mask.cpu().numpy()}
        write_metrics(self.paths.metrics, config_json=self.cfg.to_json(), train=self.train_log,
                      eval_history=self.eval_log, final_eval=final, arrays=arrays,
                      attrs={"train_time_s": self.train_time_s, "step": self.step,
                             "n_steps": self.cfg.optim.n_steps,
                             "samples_seen": self.samples_seen, "flops": self.flops,
                             **{f"tokens_{k}": v for k, v in self.tokens.items()},
                             "kl_scale": -1.0 if self.kl_scale is None else self.kl_scale,
                             "train_dtype": self.train_dtype,
                             "parent_sha256": self.parent_sha256})

    def finish(self, data_state: dict, final_eval: dict[str, float], exclude: tuple = ()) -> None:
        """Final checkpoint and metrics.h5, sae/ (and sae_1/ ...: MFR), then DONE, last."""
        cfg = self.cfg
        self.save(data_state, final_eval)
        for i, sae in enumerate(self.saes):
            out = self.paths.sae if i == 0 else self.paths.sae.with_name(f"sae_{i}")
            parent = ({"init_from": cfg.init.from_cell or cfg.init.from_path,
                       "init_sha256": self.parent_sha256} if cfg.init.warm else {})
            save_saelens(sae, out, {**cell_meta(cfg, cfg.seed + SEED_STRIDE * i, exclude),
                                    "sparsity_coeff": cfg.loss.sparsity_coeff, **parent})
        atomic_write_text(self.paths.done, f"step {self.step}\n")
