"""`python jobs/collect.py root=<root> grid=<name>`: the paper's tables and plots from the cells.

Reads every cell's config.json and metrics.h5 (read-only: a running cell may be writing its
own) and writes `<root>/<grid>/results/`: summary.csv, tables.md, tables.tex, headline.txt,
pareto_l0.png, pareto_alive.png and results.h5. Cells that are running, failed, missing or
corrupt are listed with their status and left out of the tables, never dropped silently.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e.config import SETTINGS, CellConfig  # noqa: E402
from e2e.io import atomic_path, atomic_write_text, cell_paths  # noqa: E402
from e2e.store import read_metrics  # noqa: E402
from jobs import analyze, convergence, mfr_report, tables  # noqa: E402
from jobs.grids import GRIDS  # noqa: E402


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

    @property
    def row(self) -> dict:
        c, e = self.cfg, self.eval
        hook = c.hook_name if c else ""
        later = {k: v for k, v in e.items() if k.startswith("mse/") and hook not in k}
        return {
            "cell_id": self.id, "status": self.status,
            "layer": c.layer if c else "", "setting": c.loss.setting if c else "",
            "sparsity_coeff": c.loss.sparsity_coeff if c else "", "seed": c.seed if c else "",
            "max_nnz": c.ksvd.max_nnz if c and c.loss.setting == "ksvd" else "",
            "k": c.sae.k if c and c.sae.activation == "topk" else "",
            "n_saes": c.mfr.n_saes if c else "", "mfr_coeff": c.mfr.coeff if c else "",
            "l0": e.get("l0", ""), "alive_dict_elements": e.get("alive_dict_elements", ""),
            "ce_loss_increase": e.get("ce_loss_increase", ""),
            "kl_orig_sae": e.get("kl_orig_sae", ""),
            "explained_variance": e.get(f"explained_variance/{hook}", ""),
            "mse": e.get(f"mse/{hook}", ""),
            "downstream_mse": ";".join(f"{k[4:]}={v:.6g}" for k, v in sorted(later.items())),
            "grad_norm": e.get("grad_norm", ""),
            "within_max_cos_mean": self.within_max_cos_mean,
            "l2_ratio_pos0": e.get("l2_ratio/pos0", ""),
            "l2_ratio_pos_gt0": e.get("l2_ratio/pos_gt0", ""),
            "mmcs_true": e.get("mmcs_true", ""), "recovered_true": e.get("recovered_true", ""),
            "cross_sae_similarity": e.get("mfr_similarity/symmetric_max", ""),
            "train_time_s": self.train_time_s if self.train_time_s is not None else "",
            "ce_change_2nd_half": self.change.get("ce_loss_increase", ""),
            "l0_change_2nd_half": self.change.get("l0", ""),
            "reason": self.reason,
        }


def _tail(path: Path, n: int = 5) -> str:
    if not path.exists():
        return ""
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])


def read_cell(cell_dir: Path) -> CellResult:
    paths = cell_paths(cell_dir)
    try:
        cfg = CellConfig.from_json(paths.config.read_text())
    except Exception as e:  # an unreadable config is reported, not fatal
        return CellResult(cell_dir.name, "corrupt", reason=f"config.json: {e}")
    res = CellResult(cell_dir.name, "pending", cfg)
    if paths.metrics.exists():
        try:
            m = read_metrics(paths.metrics)
            res.eval = {k: float(v) for k, v in m["eval"].items()}
            res.train_time_s = float(m["attrs"].get("train_time_s", 0.0))
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


def read_grid(grid_dir: Path) -> list[CellResult]:
    dirs = sorted(d for d in grid_dir.iterdir()
                  if d.is_dir() and not d.name.startswith("_") and d.name != "results")
    return [read_cell(d) for d in dirs if (d / "config.json").exists()]


def to_point(c: CellResult) -> tables.Point:
    """A finished cell as the tables see it."""
    return tables.Point(c.id, c.cfg.layer, c.cfg.loss.setting, c.cfg.lam,
                        c.eval["l0"], c.eval.get("alive_dict_elements", float("nan")),
                        c.eval.get("grad_norm", float("nan")), c.eval["ce_loss_increase"],
                        c.train_time_s or 0.0, c.eval.get("l2_ratio/pos0", float("nan")),
                        c.eval.get("l2_ratio/pos_gt0", float("nan")))


def _write_csv(path: Path, cells: list[CellResult]) -> None:
    _write_dict_csv(path, [c.row for c in cells])


def _write_dict_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["cell_id"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _write_h5(path: Path, cells: list[CellResult]) -> None:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for c in cells:
                g = f.create_group(c.id)
                g.attrs["status"] = c.status
                g.attrs["reason"] = c.reason
                if c.cfg is not None:
                    g.attrs["config"] = c.cfg.to_json()
                for k, v in c.eval.items():
                    g.create_dataset(k, data=v)


def collect(root: Path | str, grid: str) -> Path:
    """Builds everything under `<root>/<grid>/results/` and returns that folder."""
    grid_dir = Path(root) / grid
    out = grid_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    cells = read_grid(grid_dir)
    done = [c for c in cells if c.status == "done"]
    within = analyze.within_means(out)
    for c in cells:
        c.within_max_cos_mean = within.get(c.id, "")
    _write_csv(out / "summary.csv", cells)
    _write_h5(out / "results.h5", cells)
    # The Pareto tables compare the paper's ReLU SAEs over λ; TopK and MFR cells (fixed L0 k)
    # have their own table.
    points = [to_point(c) for c in done if not mfr_report.is_mfr_cell(c.cfg)]
    mfr_rows = mfr_report.rows(done)
    intervals = tables.PAPER_INTERVALS if grid.startswith("paper") else None
    headline = tables.headline(points, SETTINGS, intervals) if points or not mfr_rows else []
    if points:
        note = GRIDS[grid].headline_note if grid in GRIDS else ""
        headline += [tables.PAPER_HEADLINE] + ([note] if note else [])
        headline += [tables.KSVD_NOTE] if any(p.setting == "ksvd" for p in points) else []
    headline += mfr_report.headline(mfr_rows)
    changes = {c.id: c.change for c in done}
    flag = convergence.headline_line(changes)
    headline += [flag] if flag else []
    not_done = [c for c in cells if c.status != "done"]
    md, tex = tables.render(points, not_done=[(c.id, c.status, c.reason) for c in not_done],
                            headline=headline, paper=grid.startswith("paper"))
    if (out / analyze.ANALYSIS_MD).exists():  # the analysis step's sections, its last run
        md += "\n" + (out / analyze.ANALYSIS_MD).read_text()
    if (out / analyze.ANALYSIS_TEX).exists():
        tex += (out / analyze.ANALYSIS_TEX).read_text()
    if mfr_rows:
        md += "\n" + mfr_report.markdown(mfr_rows)
        _write_dict_csv(out / "mfr.csv", mfr_report.to_csv_rows(mfr_rows))
    if changes:
        md += "\n" + convergence.markdown(changes)
    atomic_write_text(out / "tables.md", md)
    atomic_write_text(out / "tables.tex", tex)
    atomic_write_text(out / "headline.txt", "\n".join(headline) + "\n")
    if points:
        tables.plot(points, out)
    return out


def main(*tokens: str) -> None:
    args = dict(str(t).lstrip("-").partition("=")[::2] for t in tokens)
    unknown = set(args) - {"root", "grid"}
    if unknown or "grid" not in args:
        sys.exit(f"usage: python jobs/collect.py root=<root> grid=<name> (unknown: {unknown})")
    out = collect(Path(args.get("root", "runs")), args["grid"])
    print((out / "headline.txt").read_text())
    print(f"tables and plots: {out}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
