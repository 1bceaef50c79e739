"""What the cells of a grid saved, read once for the collector and the analysis step.

Every cell's config.json and metrics.h5 are read read-only (a running cell may be writing its
own); cells that are running, failed, missing or corrupt get a status and a reason, never
dropped silently. The analysis step's outputs (`ANALYSIS_*` in results/) are named here too, so
the collector can include them without importing the analysis.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from e2e.config import CellConfig
from e2e.io import cell_paths, read_cell_config
from e2e.store import read_metrics
from e2e.typed import ConfigError
from jobs.plan.finetune import recipe_of
from jobs.report import convergence
from jobs.report.compare import Point

ANALYSIS_H5 = "analysis.h5"
ANALYSIS_MD = "analysis.md"
ANALYSIS_TEX = "analysis.tex"


@dataclass
class CellResult:
    id: str
    status: str  # done | running | pending | failed | corrupt | missing_metrics
    cfg: CellConfig | None = None
    eval: dict[str, float] = field(default_factory=dict)
    train_time_s: float | None = None
    reason: str = ""
    # relative change of CE loss increase and L0 over the second half of training
    change: dict[str, float] = field(default_factory=dict)
    within_max_cos_mean: float | str = ""  # from the analysis step, once it ran
    attrs: dict = field(default_factory=dict)  # metrics.h5 attributes: steps, cost, parent
    history: dict = field(default_factory=dict)  # eval history: step, l0, ce_loss_increase
    # a fine-tune's: its recipe, fraction of its parent's samples, and the parent's cost
    parent: CellResult | None = None

    @property
    def flops(self) -> float:
        return float(self.attrs.get("flops", float("nan")))

    @property
    def total_flops(self) -> float:
        """Its own training FLOPs plus its parent's (a fine-tune's cost includes the local
        training it started from)."""
        return self.flops + (self.parent.total_flops if self.parent else 0.0)

    @property
    def total_time_s(self) -> float:
        return (self.train_time_s or 0.0) + (self.parent.total_time_s if self.parent else 0.0)

    @property
    def curve(self) -> str:
        """The curve it belongs to: its setting (`<architecture>/<setting>` for an SAE other
        than the paper's ReLU: `batchtopk/e2e`), or for a fine-tune `ft-<recipe>-lr<factor>-
        <percent>`: its LR as a multiple of its parent's and its share of the parent's samples
        (e.g. `ft-e2e_mse-lr0.1-10%`)."""
        if self.cfg is None or not self.cfg.init.warm:
            return curve_of(self.cfg) if self.cfg else ""
        p = self.parent.cfg.optim if self.parent and self.parent.cfg else None
        arch = "" if self.cfg.sae.label == "relu" else f"{self.cfg.sae.label}/"
        if p is None:  # a SAELens folder, or a parent cell no longer in the grid
            return (f"{arch}ft-{recipe_of(self.cfg)}-from-"
                    f"{'path' if self.cfg.init.from_path else 'gone'}")
        return (f"{arch}ft-{recipe_of(self.cfg)}-lr{self.cfg.optim.lr / p.lr:.3g}-"
                f"{100 * self.cfg.optim.n_samples / p.n_samples:.3g}%")

    @property
    def row(self) -> dict:
        c, e = self.cfg, self.eval
        hook = c.hook_name if c else ""
        later = {k: v for k, v in e.items() if k.startswith("mse/") and hook not in k}
        return {
            "cell_id": self.id, "status": self.status,
            "layer": c.layer if c else "", "setting": c.loss.setting if c else "",
            "sparsity_coeff": c.loss.sparsity_coeff if c else "", "seed": c.seed if c else "",
            "curve": self.curve, "parent": c.init.from_cell or c.init.from_path if c else "",
            "max_nnz": c.ksvd.max_nnz if c and c.loss.setting == "ksvd" else "",
            "k": c.sae.k if c and c.sae.uses_k else "",
            "n_saes": c.mfr.n_saes if c else "", "mfr_coeff": c.mfr.coeff if c else "",
            "l0": e.get("l0", ""), "alive_dict_elements": e.get("alive_dict_elements", ""),
            "ce_loss_increase": e.get("ce_loss_increase", ""),
            "kl_orig_sae": e.get("kl_orig_sae", ""),
            "explained_variance": e.get(f"explained_variance/{hook}", ""),
            "explained_variance_pooled": e.get(f"explained_variance_pooled/{hook}", ""),
            "mse": e.get(f"mse/{hook}", ""),
            "downstream_mse": ";".join(f"{k[4:]}={v:.6g}" for k, v in sorted(later.items())),
            "grad_norm": e.get("grad_norm", ""),
            "within_max_cos_mean": self.within_max_cos_mean,
            "l2_ratio_pos0": e.get("l2_ratio/pos0", ""),
            "l2_ratio_pos_gt0": e.get("l2_ratio/pos_gt0", ""),
            "mmcs_true": e.get("mmcs_true", ""), "recovered_true": e.get("recovered_true", ""),
            "cross_sae_similarity": e.get("mfr_similarity/symmetric_max", ""),
            "train_time_s": self.train_time_s if self.train_time_s is not None else "",
            "flops": self.attrs.get("flops", ""), "total_flops": self.total_flops,
            "total_time_s": self.total_time_s,
            "ce_change_2nd_half": self.change.get("ce_loss_increase", ""),
            "l0_change_2nd_half": self.change.get("l0", ""),
            "reason": self.reason,
        }


def curve_of(cfg: CellConfig) -> str:
    """A trained cell's curve: its setting, under its architecture unless that is ReLU."""
    label = cfg.sae.label
    return cfg.loss.setting if label == "relu" else f"{label}/{cfg.loss.setting}"


def curve_order(curve: str) -> tuple[str, float]:
    """Sort key of curve names: fine-tunes by recipe and LR, then by fraction."""
    head, _, tail = curve.rpartition("-")
    try:
        return head, float(tail.rstrip("%"))
    except ValueError:
        return curve, float("inf")


def _tail(path: Path, n: int = 5) -> str:
    if not path.exists():
        return ""
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])


def read_cell(cell_dir: Path) -> CellResult:
    paths = cell_paths(cell_dir)
    try:
        cfg = read_cell_config(cell_dir)
    except Exception as e:  # an unreadable config is reported, not fatal
        return CellResult(cell_dir.name, "corrupt", reason=f"config.json: {e}")
    res = CellResult(cell_dir.name, "pending", cfg)
    if paths.metrics.exists():
        try:
            m = read_metrics(paths.metrics)
            res.eval = {k: float(v) for k, v in m["eval"].items()}
            res.train_time_s = float(m["attrs"].get("train_time_s", 0.0))
            res.attrs = dict(m["attrs"])
            res.history = {k: np.asarray(v) for k, v in m["eval_history"].items()
                           if k in ("step", "l0", "ce_loss_increase")}
            res.change = convergence.second_half_change(
                m["eval_history"], float(m["attrs"].get("n_steps", 0)))
        except Exception as e:  # truncated or not HDF5 at all
            res.status, res.reason = "corrupt", f"metrics.h5 unreadable: {type(e).__name__}: {e}"
            return res
    failed = cell_dir / "FAILED"
    if paths.done.exists():
        if not res.eval:
            res.status, res.reason = "missing_metrics", "DONE but metrics.h5 has no eval group"
        else:
            res.status = "done"
    elif failed.exists():
        res.status = "failed"
        res.reason = failed.read_text().strip() + " || log: " + _tail(paths.log)
    elif paths.checkpoint.exists() or paths.metrics.exists():
        res.status, res.eval = "running", {}
    return res


def existing_grid_dir(root: Path | str, grid: str) -> Path:
    """`<root>/<grid>`, or ConfigError when no grid was run there."""
    d = Path(root) / grid
    if not d.is_dir():
        raise ConfigError(f"grid={grid!r}: {d} does not exist (no cells of that grid under "
                          f"root={root})")
    return d


def read_grid(grid_dir: Path, progress: bool = False) -> list[CellResult]:
    """Every cell folder of the grid as the collector sees it; `progress`: a bar on stderr
    (the collector's: a grid of hundreds of cells on a shared filesystem takes a while)."""
    from tqdm import tqdm

    dirs = sorted(d for d in grid_dir.iterdir() if d.is_dir() and not d.name.startswith("_")
                  and d.name != "results" and (d / "config.json").exists())
    cells = [read_cell(d) for d in tqdm(dirs, desc="collector", disable=not progress,
                                         file=sys.stderr, mininterval=1)]
    by_id = {c.id: c for c in cells}
    for c in cells:
        if c.cfg is not None and c.cfg.init.from_cell:
            c.parent = by_id.get(c.cfg.init.from_cell)
    return cells


def to_point(c: CellResult) -> Point:
    """A finished cell as the tables see it."""
    return Point(c.id, c.cfg.layer, c.curve, c.cfg.lam,
                        c.eval["l0"], c.eval.get("alive_dict_elements", float("nan")),
                        c.eval.get("grad_norm", float("nan")), c.eval["ce_loss_increase"],
                        c.train_time_s or 0.0, c.eval.get("l2_ratio/pos0", float("nan")),
                        c.eval.get("l2_ratio/pos_gt0", float("nan")), c.cfg.seed)


def within_means(results: Path) -> dict[str, float]:
    """cell id -> mean within-SAE max cosine, from a previous analysis (for summary.csv)."""
    import h5py

    path = results / ANALYSIS_H5
    if not path.exists():
        return {}
    with h5py.File(path, "r") as f:
        return {k: float(v) for k, v in f.attrs.items() if not k.startswith("_")}


