"""One cell as a job: `python -m jobs.cell <cell_dir>` trains or resumes the cell in that folder.

Under submitit the cell is `Checkpointable`: SIGUSR2 (preemption, or the time limit near) sets a
flag that the training loop polls between optimizer steps; the loop checkpoints and returns, and
then submitit's own handler requeues the job, which resumes from the checkpoint.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

import submitit
import torch

from e2e.config import CellConfig
from e2e.io import cell_paths
from e2e.train import train

FAILED = "FAILED"
# Exit status of a cell run by hand (not under submitit) that stopped on SIGUSR2 after
# checkpointing; slurm/array.sbatch requeues on it.
EXIT_INTERRUPTED = 3


def _log(cell_dir: Path, message: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    with open(cell_paths(cell_dir).log, "a") as f:
        f.write(f"[{stamp}] {message}\n")


class _StopOnUsr2:
    """Turns SIGUSR2 into a flag; keeps the handler it replaced (submitit's) to call later."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def hand_over(self) -> None:
        """Lets submitit checkpoint (pickle this job) and requeue; it exits the process."""
        if callable(self.previous):
            self.previous(signal.SIGUSR2, None)
        print("interrupted by SIGUSR2; checkpoint written, run again to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def match_threads_to_allocation() -> None:
    """One torch thread per allocated CPU: without cgroups a job sees every core of the node,
    and two cells each running a thread per core slow each other down tenfold."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus:
        torch.set_num_threads(int(cpus))


class CellJob(submitit.helpers.Checkpointable):
    """Picklable callable that submitit runs (and requeues) for one cell folder."""

    def __init__(self, cell_dir: str | Path):
        self.cell_dir = str(cell_dir)

    def __call__(self) -> str:
        match_threads_to_allocation()
        cell_dir = Path(self.cell_dir)
        paths = cell_paths(cell_dir)
        (cell_dir / FAILED).unlink(missing_ok=True)
        cfg = CellConfig.from_json(paths.config.read_text())
        stop = _StopOnUsr2()
        _log(cell_dir, "start" + (" (resuming)" if paths.checkpoint.exists() else "")
             + f" on {platform.node()} with {sys.executable}")
        try:
            status = train(cfg, cell_dir, should_stop=lambda: stop.requested)
        except BaseException as e:
            _log(cell_dir, "failed:\n" + traceback.format_exc())
            (cell_dir / FAILED).write_text(f"{type(e).__name__}: {e}\n")
            raise
        _log(cell_dir, status)
        if status == "interrupted":
            stop.hand_over()
        return status


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m jobs.cell <cell_dir>")
    print(CellJob(sys.argv[1])())
