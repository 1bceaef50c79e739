"""One status line for a local run: the stage running, cells done / total, and the time left.

The time left is the running task's remainder plus the tasks still to come, each at the minutes
the grid measured for its kind of task on a 2-core machine (`Grid.local_minutes`). Training
tasks (cells, a small LM's pre-training) are scaled first by this chip's matmul rate against
the measuring machine's (`machine_speed`), then by how fast this run's finished training tasks
went; the steps around them (building a model from a GGUF, collector, analysis) by how fast
their own finished ones went: a slow chip moves the first several times more than the second
(docs/demo.md). The running task's fraction comes from its own progress bar (tqdm's
`n/total`) in its stderr.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass

from e2e.lm.gguf import GGUFLMConfig
from jobs.plan.evals import job_minutes

_BAR = re.compile(r"(\d+)/(\d+) \[")


# Minutes per task when a grid measured none: only the relative sizes matter until one ends.
_DEFAULT_MINUTES = {"pretrain": 5.0, "sae": 5.0, "ksvd": 2.0, "collect": 0.2, "analyze": 1.0}
_NAMES = {"pretrain": "pre-training", "build": "building the model", "sae": "SAE cells",
          "ksvd": "ksvd cells", "collect": "collector", "analyze": "analysis",
          "autointerp": "auto-interp", "evals": "evaluation"}


@dataclass
class Task:
    kind: str  # pretrain | build | sae | ksvd | collect | analyze | autointerp | evals
    cells: int  # cells it finishes (0 for the steps around them)
    expected_s: float
    spent_s: float | None = None  # once finished
    failed: bool = False

    @property
    def trains(self) -> bool:
        """Whether the task's time is the chip's matmuls (cells, and a small LM's training):
        what a chip's speed moves, not the steps around them (`Progress.seconds_left`)."""
        return self.kind in ("pretrain", "sae", "ksvd")


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
    def for_plan(cls, plan, minutes: dict[str, float], speed: float = 1.0) -> Progress:
        """The plan's tasks at the grid's measured `minutes` times `speed` (this machine's
        time against the measuring machine's: `machine_speed`) until some have finished."""
        m = {**_DEFAULT_MINUTES, **minutes}
        # a real LM's build from a GGUF reads and dequantises: no training to scale
        build = "build" if isinstance(plan.grid.pretrain, GGUFLMConfig) else "pretrain"
        tasks = [Task(build, 0, 60 * m["pretrain"])] if plan.needs_pretrain else []
        for pack in plan.todo_packs:
            kind = pack[0].cfg.kind
            tasks.append(Task(kind, len(pack), 60 * m[kind]))
        # fine-tune packs: "finetune" is a pack's minutes at fraction 1 (an e2e step costs
        # several local ones); a grid that measured none: a fraction of a cell pack's
        per_fraction = m.get("finetune", m["sae"])
        for f, packs in plan.child_tasks(plan.packs):
            tasks += [Task("sae", len(p), 60 * per_fraction * f) for p in packs if p]
        # the analysis at its cost model's seconds (`jobs.plan.analysis_cost`), a measured grid's
        # minutes where there are some
        analyze = 60 * minutes["analyze"] if "analyze" in minutes else plan.analysis_s
        tasks += [Task("collect", 0, 60 * m["collect"]), Task("analyze", 0, analyze)]
        if plan.autointerp:
            tasks.append(Task("autointerp", 0, 60 * plan.autointerp_minutes))
        if plan.evals:  # its limit is twice its model: half of it is the estimate
            tasks.append(Task("evals", 0, 30 * (job_minutes(plan) - 10)))
        for t in tasks:
            t.expected_s *= speed if t.trains else 1.0
        return cls(plan.grid.name, tasks)

    def start(self, task: Task) -> None:
        self.current, self.started = task, time.perf_counter()
        self.update(task, 0.0, force=True)

    def finish(self, task: Task) -> None:
        task.spent_s = time.perf_counter() - self.started
        self.current = None

    def speed(self, trains: bool) -> float:
        """This run against the expected times, from its finished tasks of the same group
        (training tasks, or the steps around them: a chip's speed moves the first much more
        than the second), 1 before one has finished."""
        done = [t for t in self.tasks if t.spent_s is not None and t.trains == trains]
        expected = sum(t.expected_s for t in done)
        return sum(t.spent_s for t in done) / expected if expected else 1.0

    def seconds_left(self, fraction: float) -> float:
        speed = {True: self.speed(True), False: self.speed(False)}
        left = sum(t.expected_s * speed[t.trains] for t in self.tasks
                   if t.spent_s is None and t is not self.current)
        if self.current is not None:
            elapsed = time.perf_counter() - self.started
            own = (elapsed / fraction - elapsed if fraction > 0.05
                   else self.current.expected_s * speed[self.current.trains] - elapsed)
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


def machine_speed(grid, cfg) -> tuple[float, str]:
    """(factor, line): how much longer than `grid.local_minutes` this machine should take,
    the rate of a dense matmul where they were measured (`grid.local_gflops`) over this CPU's
    in the dtype `cfg` trains in here (`e2e.kernels.chip`: fp32 on a chip without native bf16); the
    line says so for the run's output. (1, "") for a grid that measured no rate, or on a GPU.
    A short calibration (~0.5 s): the demo's steps are matmuls, so a chip's rate moves their
    time (docs/demo.md)."""
    import torch

    from e2e.kernels.chip import dense_gflops, train_dtype

    if not grid.local_gflops or (cfg.device != "cpu" and torch.cuda.is_available()):
        return 1.0, ""
    dtype = train_dtype(cfg.dtype, torch.device("cpu"))
    here = dense_gflops(torch.device("cpu"), getattr(torch, dtype))
    factor = min(20.0, max(0.2, grid.local_gflops / here))
    return factor, (f"this CPU: a {dtype} matmul at {here:.0f} GFLOP/s, against "
                    f"{grid.local_gflops:.0f} where grid={grid.name}'s times were measured: "
                    f"estimates x{factor:.2f}")
