"""One pack as a job (`CellJob`; by hand: `python -m jobs.cell <cell_dir> ...`) trains or
resumes the cells in those folders together (one shared pass of the frozen model; a single cell
is a pack of one). Each cell keeps its own files, log and FAILED marker.

Under submitit the cell is `Checkpointable`: SIGUSR2 (preemption, or the time limit near) sets a
flag that the training loop polls between optimizer steps; the loop checkpoints and returns, and
then submitit's own handler requeues the job, which resumes from the checkpoint. SIGTERM (a
preemption that sends no user signal) checkpoints the same way and, in a SLURM job, requeues it
too; outside SLURM it exits 143 (`_StopOnSignal`).
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

from e2e.io import cell_paths, read_cell_config
from e2e.train import MemberFailed, train_pack
from e2e.train.lock import CellBusyError
from jobs.plan.containers import malloc_in_use

FAILED = "FAILED"


# Exit status of a cell run by hand (not under submitit) that stopped on SIGUSR2 after
# checkpointing; slurm/array.sbatch requeues on it.
EXIT_INTERRUPTED = 3

# A requeued job (SLURM_RESTART_COUNT > 0) may start while its killed predecessor's container
# is still being removed (up to 2 s to notice, then the kill: jobs/plan/containers.py) and so
# still holds the cell's lock: it waits this long before taking the cell for another
# submission's and skipping it, which would leave the cell unfinished.
REQUEUE_LOCK_WAIT_S = 120.0


def _log(cell_dir: Path, message: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    with open(cell_paths(cell_dir).log, "a") as f:
        f.write(f"[{stamp}] {message}\n")


class _StopOnSignal:
    """Turns SIGUSR2 and SIGTERM into a flag; keeps the USR2 handler it replaced (submitit's)
    to call later.

    USR2 is SLURM's warning before the time limit (`--signal=USR2@120`) and, where the cluster
    sets `PreemptParameters=send_user_signal`, before preemption. Elsewhere preemption sends
    SIGTERM, then SIGKILL when the partition's GraceTime is over, and submitit's own handler
    ignores TERM: here TERM, too, checkpoints at the end of the running step (`hand_over`)."""

    def __init__(self) -> None:
        self.requested = 0  # the signal received, 0 for none
        self.previous = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = self.requested or signum

    def hand_over(self) -> None:
        """USR2, and TERM in a SLURM job: lets submitit checkpoint (pickle this job) and requeue
        (on the plain-sbatch path, exit 3: the task requeues itself); it exits the process. A
        preempted job that exits during its GraceTime is not requeued by SLURM (measured: it
        ends FAILED with 143, or COMPLETED with 0), so TERM in a job requeues like USR2. The
        cost: `scancel` (TERM too) requeues a running cell once; a second `scancel` of the
        pending job cancels it (docs/cluster.md). TERM outside SLURM: exits 143."""
        name = signal.Signals(self.requested).name
        print(f"interrupted by {name}; checkpoint written, run again to resume",
              file=sys.stderr, flush=True)
        if self.requested == signal.SIGTERM and not os.environ.get("SLURM_JOB_ID"):
            sys.exit(128 + signal.SIGTERM)
        if callable(self.previous):
            self.previous(signal.SIGUSR2, None)
        sys.exit(EXIT_INTERRUPTED)


def match_threads_to_allocation(cpus: int = 0) -> None:
    """One torch thread per allocated CPU (SLURM's, else `cpus` if given): without cgroups a job
    sees every core of the node, and two jobs each running a thread per core slow each other
    down tenfold (the multi-dimensional step: 10.9 s alone, 89.8 s beside two busy processes
    with 2 threads, 24.2 s with 1; benchmarks/bench_multidim.py)."""
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or cpus)
    if cpus:
        torch.set_num_threads(cpus)


class CellJob(submitit.helpers.Checkpointable):
    """Picklable callable that submitit runs (and requeues) for one pack of cell folders."""

    def __init__(self, cell_dirs: str | Path | list[str | Path]):
        dirs = [cell_dirs] if isinstance(cell_dirs, (str, Path)) else list(cell_dirs)
        self.cell_dirs = [str(d) for d in dirs]

    def __call__(self) -> str:
        if not self.cell_dirs:  # a task of a fine-tune array whose parents have no children
            return "nothing to train"
        match_threads_to_allocation()
        dirs = [Path(d) for d in self.cell_dirs]
        cfgs = []
        for d in dirs:
            (d / FAILED).unlink(missing_ok=True)
            cfgs.append(read_cell_config(d))
        stop = _StopOnSignal()
        pack = f" in a pack of {len(dirs)}" if len(dirs) > 1 else ""
        for d in dirs:
            resuming = " (resuming)" if cell_paths(d).checkpoint.exists() else ""
            _log(d, f"start{resuming}{pack} on {platform.node()} with {sys.executable}, "
                    f"{malloc_in_use()} malloc")
        try:
            requeued = os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")
            statuses = train_pack(cfgs, dirs, should_stop=lambda: bool(stop.requested),
                                  lock_wait_s=REQUEUE_LOCK_WAIT_S if requeued else 0.0)
        except CellBusyError as e:  # another process trains it (a second submission into
            for d in dirs:          # the root): skipped here, not a failure of the cell
                for line in [x for x in str(e).splitlines() if x.startswith(f"{d} ")]:
                    _log(d, f"refused: {line}")
            return "\n".join(f"skipped: {line}" for line in str(e).splitlines())
        except MemberFailed as e:
            for d in dirs:
                err = e.failures.get(str(d))
                _log(d, f"failed: {type(err).__name__}: {err}" if err else
                     "finished or checkpointed; another member of its pack failed")
                if err:
                    (d / FAILED).write_text(f"{type(err).__name__}: {err}\n")
            raise
        except BaseException as e:
            for d in dirs:
                _log(d, "failed:\n" + traceback.format_exc())
                (d / FAILED).write_text(f"{type(e).__name__}: {e}\n")
            raise
        for d, status in zip(dirs, statuses, strict=True):
            _log(d, status)
        if "interrupted" in statuses:
            stop.hand_over()
        return "done"
