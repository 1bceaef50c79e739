"""The plan as `submit.py` prints it."""

from __future__ import annotations

from pathlib import Path

from jobs.plan.autointerp import CACHE as AUTOINTERP_CACHE
from jobs.plan.autointerp import n_dictionaries
from jobs.plan.evals import job_mem_gb, job_minutes
from jobs.plan.grids import pretrain_dir
from jobs.plan.make import Plan


def format_plan(plan: Plan) -> str:
    o = plan.opts
    lines = [f"grid {plan.grid.name}: {len(plan.cells)} cells, {len(plan.todo)} to run "
             f"({sum(c.status == 'done' for c in plan.cells)} done) under {plan.grid_dir}",
             f"packs: up to {plan.pack_size} cells per task sharing one pass of the frozen "
             f"model (pack=; grid default {plan.grid.pack}): {len(plan.packs)} tasks, "
             f"{len(plan.todo_packs)} to run",
             f"executor: {plan.executor}; container: {plan.container}"]
    if plan.executor == "slurm":
        lines.append(f"SLURM, per task: --gres=gpu:{o.gpus_per_cell} --cpus-per-task="
                     f"{plan.cpus} --time={plan.time_min} (minutes) "
                     f"--partition={o.partition or '(default)'} "
                     f"--mem={f'{o.mem_gb}G' if o.mem_gb else '(default)'}, one array "
                     f"(parallelism {o.array_parallelism or 'unlimited'}), --signal=USR2@120, "
                     "--requeue")
    else:
        lines.append(f"local processes, {o.array_parallelism or 1} at a time (on SLURM each "
                     f"task would ask for {o.gpus_per_cell} GPU and {plan.time_min} min)")
    if plan.grid.gpu_hours:
        known = [h for h in (plan.grid.cell_gpu_hours(c.cfg) for c in plan.todo)
                 if h is not None]
        some = "" if len(known) == len(plan.todo) else f"{len(known)} of "
        lines.append(f"estimated {sum(known):,.0f} GPU-hours for {some}the {len(plan.todo)} "
                     f"cells to run{' (the others: no estimate)' if some else ''} "
                     f"({plan.grid.gpu_hours_source}; packs share the clean pass)")
    lines += _memory_lines(plan)
    if plan.needs_pretrain:
        lines.append(f"pre-training job first -> {pretrain_dir(Path(o.root), plan.grid.name)}")
    for s in plan.stages:
        lines.append(f"{'staging here first' if o.stage else 'stage'}: {s.describe()}")
    lines.append(f"job command: {plan.python} -u -m submitit.core._submit <job folder>")
    lines.append(f"{'task':>4} {'cell':34} {'layer':>5} {'setting':8} {'λ':>8}  status"
                 + ("  (ksvd: λ is max_nnz)" if any(c.cfg.loss.setting == "ksvd"
                                                    for c in plan.cells) else ""))
    for t, pack in enumerate(plan.packs):
        for c in pack:
            lines.append(f"{t:>4} {c.id:34} {c.cfg.layer:>5} {c.cfg.loss.setting:8} "
                         f"{c.cfg.lam:>8g}  {c.status}")
    lines += _finetune_lines(plan)
    arrays = "the arrays, whatever their" if plan.children else "the array, whatever its"
    pages, size, seconds = plan.browser_estimate
    device = f"{plan.analysis_gpus} GPU, " if plan.analysis_gpus else "CPU only, "
    lines.append(f"then: collector job (after {arrays} outcome), then the "
                 f"analysis job (after the collector; {device}{plan.cpus} CPUs, "
                 f"--time={plan.analysis_time_min} --mem={plan.analysis_mem_gb}G: geometry, "
                 f"downstream reconstruction, multi-dimensional features, and the feature "
                 f"browser: at most {pages:,} feature pages, about {size / 1e6:,.0f} MB, "
                 f"{seconds / 60:,.0f} min)")
    lines += _autointerp_lines(plan)
    if plan.evals:
        ev = plan.evals
        what = ", ".join(("SAEBench's core",) * ("core" in ev.names) + (
            f"sparse probing on {len(ev.datasets)} dataset(s) of sae-probes (at most "
            f"{ev.max_rows:,} rows each)",) * ("probing" in ev.names) + (
            f"SAEBench's absorption ({f'{ev.words:,}' if ev.words else 'all'} words)",)
            * ("absorption" in ev.names))
        where = f"the dictionaries at layers {list(ev.layers)}" if ev.layers else (
            "every dictionary")
        lines.append(f"then: evaluation job (after the analysis): {what} of {where}, "
                     f"--time={job_minutes(plan)} --mem={job_mem_gb(plan)}G; results/evals/ "
                     "as SAEBench lays them out (docs/evals.md)")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _autointerp_lines(plan: Plan) -> list[str]:
    """The auto-interp step: where it asks, and how much (an upper bound)."""
    ai = plan.autointerp
    if ai is None:
        return []
    dicts = n_dictionaries(plan)
    requests, tokens = ai.estimate(dicts)
    cost = f", about ${tokens * ai.price_per_mtok / 1e6:,.2f} at ${ai.price_per_mtok:g} per " \
        "million tokens" if ai.price_per_mtok else ""
    where = (f"a server the job starts on its own {ai.serve_gpus} GPU(s): "
             f"{ai.serve_command.format(model=ai.serve, port='<port>')}" if ai.serve
             else ai.base_url)
    return [f"then: auto-interp job (after the analysis): {ai.n_features} live features per "
            f"dictionary x {dicts} dictionaries, explained by {ai.explainer} and scored "
            f"({', '.join(ai.scorers)}) by {ai.scorer} at {where}: at most {requests:,} "
            f"requests, about {tokens / 1e6:,.1f}M tokens{cost}; answers cached under "
            f"{Path(plan.opts.root).resolve() / AUTOINTERP_CACHE} (a rerun sends only "
            "what is not cached)"]


def _memory_lines(plan: Plan) -> list[str]:
    """Estimated peak GPU memory per cell of each setting, where the model's sizes are known
    (its config here, or the grid's `model_sizes`); `--mem=` is host memory, not this."""
    from jobs.plan.cell_memory import cell_memory_gib
    from jobs.plan.sources import model_config

    cfgs = [c.cfg for c in plan.todo if c.cfg.source == "model" and c.cfg.loss.setting != "ksvd"]
    if not cfgs or plan.executor != "slurm" and not plan.opts.dry_run:
        return []
    hf = model_config(cfgs[0].model.name_or_path) or plan.grid.model_sizes
    peak: dict[str, float] = {}
    for cfg in cfgs:
        gib = cell_memory_gib(cfg, hf) if hf else None
        if gib is not None:
            peak[cfg.loss.setting] = max(peak.get(cfg.loss.setting, 0.0), gib)
    if not peak:
        return []
    return ["estimated GPU memory of a cell alone at most (a pack holds more): " + ", ".join(
        f"{s} {g:,.0f} GiB" for s, g in peak.items()) + " (jobs/plan/cell_memory.py: a model "
        "calibrated on one H200 measurement of a GPT-2 e2e cell)"]


def _finetune_lines(plan: Plan) -> list[str]:
    """The fine-tune stage: its tasks, and its GPU-hours against e2e from scratch."""
    if not plan.children:
        return []
    ft = plan.finetune
    todo = [c for c in plan.children if c.status != "done"]
    parents = {p for p, _ in plan.child_of.values()}
    lines = [f"fine-tune stage: {len(plan.children)} children of {len(parents)} local cells "
             f"({', '.join(ft.settings)} x fractions "
             f"{', '.join(f'{f:g}' for f in ft.fractions)}; lr x{ft.lr_factor:g}, warm-up "
             f"{ft.warmup:.0%}), {len(todo)} to run; on SLURM one array per fraction, task i "
             "after parent task i (--dependency=aftercorr)"]
    hours = plan.grid.gpu_hours
    if hours:
        by_id = {c.id: c for c in plan.cells}
        own = sum(hours.get((c.cfg.layer, c.cfg.loss.setting), 0) * plan.child_of[c.id][1]
                  for c in todo)
        e2e = sum(hours.get((by_id[p].cfg.layer, "e2e"), 0) for p in parents)
        local = sum(hours.get((by_id[p].cfg.layer, "local"), 0) for p in parents)
        lines.append(f"estimated {own:,.0f} GPU-hours for the children to run (a fraction of "
                     f"an e2e cell each); per recipe and fraction, local + fine-tune costs "
                     f"{local:,.0f} + {own / len(ft.settings) / len(ft.fractions):,.0f} "
                     f"against {e2e:,.0f} GPU-hours for e2e from scratch at the same "
                     f"{len(parents)} (layer, λ) points")
    for f, packs in plan.child_tasks(plan.packs):
        for t, pack in enumerate(packs):
            for c in pack:
                lines.append(f"{t:>4} {c.id:34} {c.cfg.layer:>5} {'ft ' + f'{f:g}':8} "
                             f"{c.cfg.lam:>8g}  {c.status} (after {plan.child_of[c.id][0]})")
    return lines
