"""Every finished dictionary of a grid coded by the same encoder: is a dictionary trained end to
end better than one fitted to the activations, once the encoder is taken out of the question?

    python benchmarks/ksvd_same_encoder.py [root=runs] [grid=tiny] [budgets=3,6,12,24]

Each done cell's dictionary (an SAE's unit-norm W_dec and b_dec, or a ksvd cell's D and b) is
wrapped as `e2e.ksvd.KSVDDictionary` (matching pursuit with a least-squares refit, at most
`budget` atoms per token) and scored by the evaluation every cell gets, on the grid's own eval
batches. Prints, per setting and budget, the best and the median CE loss increase over that
setting's dictionaries, and writes every value to `<root>/<grid>/results/same_encoder.csv`.
"""

from __future__ import annotations

import csv
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from e2e.data.source import eval_batches, evaluate_dictionaries, open_source
from e2e.io import cell_paths
from e2e.ksvd import KSVDDictionary
from jobs import cli
from jobs.report.results import read_grid


@dataclass(frozen=True)
class Options:
    root: str = "runs"
    grid: str = "tiny"
    budgets: tuple[int, ...] = (3, 6, 12, 24)


def main(*tokens: str) -> None:
    o = cli.parse_options(tokens, Options)
    grid_dir = Path(o.root) / o.grid
    budgets = list(o.budgets)
    cells = [c for c in read_grid(grid_dir) if c.status == "done" and c.cfg.source == "model"
             and c.cfg.sae.activation == "relu" and c.cfg.mfr.n_saes == 1]
    if not cells:
        sys.exit(f"no finished cells under {grid_dir}")
    from safetensors.torch import load_file

    source = open_source([cells[0].cfg], torch.device("cpu"), grid_dir)
    batches = eval_batches(source, cells[0].cfg, torch.device("cpu"))
    rows = []
    for c in cells:
        t = load_file(str(cell_paths(grid_dir / c.id).sae / "sae_weights.safetensors"))
        d = torch.nn.functional.normalize(t["W_dec"].float(), dim=1).T
        for m in budgets:
            model = KSVDDictionary(d, t["b_dec"], max_nnz=m)
            ev = evaluate_dictionaries(source, [model], c.cfg.layer, batches)[0]
            rows.append({"cell_id": c.id, "setting": c.cfg.loss.setting, "lam": c.cfg.lam,
                         "budget": m, "l0": ev["l0"], "ce_loss_increase": ev["ce_loss_increase"],
                         "own_l0": c.eval["l0"], "own_ce_loss_increase":
                         c.eval["ce_loss_increase"]})
            print(f"{c.id:28} budget {m:>3}: L0 {ev['l0']:6.2f}, CE loss increase "
                  f"{ev['ce_loss_increase']:.4f} (own encoder: L0 {c.eval['l0']:.1f}, "
                  f"{c.eval['ce_loss_increase']:.4f})", flush=True)
    out = grid_dir / "results" / "same_encoder.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\nCE loss increase with matching pursuit + refit, best / median over each setting's "
          "dictionaries")
    settings = sorted({r["setting"] for r in rows})
    print("budget  " + "  ".join(f"{s:>17}" for s in settings))
    for m in budgets:
        cells_m = [[r["ce_loss_increase"] for r in rows if r["budget"] == m
                    and r["setting"] == s] for s in settings]
        print(f"{m:>6}  " + "  ".join(f"{min(v):.4f} / {statistics.median(v):.4f}"
                                      for v in cells_m))
    print(f"written: {out}")


if __name__ == "__main__":
    cli.run(main)
