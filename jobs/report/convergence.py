"""Convergence of a finished cell, from the eval history it saved (issue: the demo's budget).

The cosine schedule makes the last steps move little even when a cell is far from converged,
so the report compares the final eval with the first eval of the second half of training: the
relative change of the CE loss increase and of L0 over that half. A cell whose change exceeds
`THRESHOLD` in either is flagged "not converged: compare with care" in tables.md and the
headline.
"""

from __future__ import annotations

import math

THRESHOLD = 0.10  # 10% over the second half: more than run-to-run noise on the small grids
METRICS = ("ce_loss_increase", "l0")


def second_half_change(history: dict, n_steps: float) -> dict[str, float]:
    """{metric: |final - value at the start of the second half| / |final|}; NaN if the history
    has no eval in the second half before the final one."""
    steps = list(history.get("step", []))
    out = {}
    for name in METRICS:
        values = list(history.get(name, []))
        later = [i for i, s in enumerate(steps[:len(values)]) if s >= n_steps / 2]
        if len(later) < 2 or values[later[-1]] == 0:
            out[name] = math.nan
            continue
        first, final = values[later[0]], values[later[-1]]
        out[name] = abs(final - first) / abs(final)
    return out


def not_converged(change: dict[str, float]) -> bool:
    return any(v > THRESHOLD for v in change.values() if not math.isnan(v))


def headline_line(changes: dict[str, dict[str, float]]) -> str | None:
    """One headline line when some cells are not converged, else None."""
    flagged = sorted(cid for cid, ch in changes.items() if not_converged(ch))
    if not flagged:
        return None
    return (f"not converged: {len(flagged)} of {len(changes)} finished cells changed by more "
            f"than {THRESHOLD:.0%} in CE loss increase or L0 over the second half of training "
            "(tables.md, Convergence): compare with care")


def markdown(changes: dict[str, dict[str, float]]) -> str:
    """The Convergence section of tables.md: a row per finished cell."""
    fmt = lambda v: "n/a" if math.isnan(v) else f"{v:.1%}"  # noqa: E731
    lines = ["## Convergence: relative change over the second half of training", "",
             "| cell | CE loss increase | L0 | |", "|---|---|---|---|"]
    for cid, ch in sorted(changes.items()):
        flag = "not converged: compare with care" if not_converged(ch) else ""
        lines.append(f"| {cid} | {fmt(ch['ce_loss_increase'])} | {fmt(ch['l0'])} | {flag} |")
    lines.append("")
    lines.append(f"_first eval at or after half of the steps against the final eval; flagged "
                 f"above {THRESHOLD:.0%}_")
    return "\n".join(lines) + "\n"
