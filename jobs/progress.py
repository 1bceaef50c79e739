"""One status line for a local run: the stage running, cells done / total, and the time left.

The time left is the running task's remainder plus the tasks still to come, each at the minutes
the grid measured for its kind of task on a 2-core machine (`Grid.local_minutes`), scaled by
how fast the finished tasks of this run went against the same measurements. The running task's
fraction comes from its own progress bar (tqdm's `n/total`) in its stderr.
"""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass

_BAR = re.compile(r"(\d+)/(\d+) \[")


def modelled_bar(desc: str, total_s: float):
    """A tqdm bar on stderr over a step's modelled seconds (its cost model's): the local
    status line reads its n/total as the step's fraction (`fraction_done`)."""
    from tqdm import tqdm

    return tqdm(total=max(1, math.ceil(total_s)), desc=desc, mininterval=1, file=sys.stderr,
                unit="modelled s", bar_format="{desc}: {n}/{total} [{elapsed}] {unit}")
# Minutes per task when a grid measured none: only the relative sizes matter until one ends.
_DEFAULT_MINUTES = {"pretrain": 5.0, "sae": 5.0, "ksvd": 2.0, "collect": 0.2, "analyze": 1.0}
_NAMES = {"pretrain": "pre-training", "sae": "SAE cells", "ksvd": "ksvd cells",
          "collect": "collector", "analyze": "analysis", "autointerp": "auto-interp"}


@dataclass
class Task:
    kind: str  # pretrain | sae | ksvd | collect | analyze
    cells: int  # cells it finishes (0 for the steps around them)
    expected_s: float
    spent_s: float | None = None  # once finished
    failed: bool = False


def fraction_done(stderr_text: str) -> float:
    """The fraction of the last progress bar in a job's stderr (0 before one appears)."""
    found = _BAR.findall(stderr_text[-2000:])
    if not found:
        return 0.0
    n, total = map(int, found[-1])
    return min(1.0, n / total) if total else 0.0


class Progress:
    """Prints the status line; `start(task)`, `update(task, fraction)`, `finish(task)`."""

    def __init__(self, grid: str, tasks: list[Task], out=None):
        self.grid, self.tasks, self.out = grid, tasks, out or sys.stderr
        self.t0 = time.perf_counter()
        self.tty = getattr(self.out, "isatty", lambda: False)()
        self.last_print = 0.0
        self.current: Task | None = None
        self.started = 0.0

    @classmethod
    def for_plan(cls, plan, minutes: dict[str, float]) -> Progress:
        m = {**_DEFAULT_MINUTES, **minutes}
        tasks = [Task("pretrain", 0, 60 * m["pretrain"])] if plan.needs_pretrain else []
        for pack in plan.todo_packs:
            kind = pack[0].cfg.kind
            tasks.append(Task(kind, len(pack), 60 * m[kind]))
        for f, packs in plan.child_tasks(plan.packs):  # fine-tune packs: a fraction of a pack
            tasks += [Task("sae", len(p), 60 * m["sae"] * f) for p in packs if p]
        # the analysis at its cost model's seconds (`jobs.analysis_cost`), a measured grid's
        # minutes where there are some
        analyze = 60 * minutes["analyze"] if "analyze" in minutes else plan.analysis_s
        tasks += [Task("collect", 0, 60 * m["collect"]), Task("analyze", 0, analyze)]
        if plan.autointerp:
            tasks.append(Task("autointerp", 0, 60 * plan.autointerp_minutes))
        return cls(plan.grid.name, tasks)

    def start(self, task: Task) -> None:
        self.current, self.started = task, time.perf_counter()
        self.update(task, 0.0, force=True)

    def finish(self, task: Task) -> None:
        task.spent_s = time.perf_counter() - self.started
        self.current = None

    def seconds_left(self, fraction: float) -> float:
        done = [t for t in self.tasks if t.spent_s is not None]
        speed = (sum(t.spent_s for t in done) / sum(t.expected_s for t in done)
                 if done else 1.0)  # this machine against the grid's measurements
        left = sum(t.expected_s for t in self.tasks if t.spent_s is None
                   and t is not self.current) * speed
        if self.current is not None:
            elapsed = time.perf_counter() - self.started
            own = (elapsed / fraction - elapsed if fraction > 0.05
                   else self.current.expected_s * speed - elapsed)
            left += max(0.0, own)
        return left

    def line(self, task: Task, fraction: float) -> str:
        cells = sum(t.cells for t in self.tasks)
        done = sum(t.cells for t in self.tasks if t.spent_s is not None and not t.failed)
        same = [t for t in self.tasks if t.kind == task.kind]
        k = same.index(task) + 1
        where = _NAMES[task.kind] + (f" {k}/{len(same)}" if len(same) > 1 else "")
        elapsed = (time.perf_counter() - self.t0) / 60
        left = self.seconds_left(fraction) / 60
        return (f"[{self.grid} {elapsed:4.1f} min] {where} at {fraction:4.0%} | cells "
                f"{done}/{cells} done | about {left:.0f} min left")

    def update(self, task: Task, fraction: float, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last_print < (2 if self.tty else 30):
            return
        self.last_print = now
        text = self.line(task, fraction)
        if self.tty:
            self.out.write("\r" + text.ljust(100)[:120])
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()
