"""The command that stands for `python` in a job: plain, or inside an Apptainer/podman image.

submitit puts it verbatim before `-u -m submitit.core._submit <folder>`. The shared root is
bound at the same path; `/etc/slurm` and munge's socket are bound so that the requeue after a
preemption (`scontrol requeue`, run by submitit inside the container) reaches the controller.
A plain job preloads tcmalloc where it is installed (`allocator_env`); the image preloads it
itself (/etc/ld.so.preload, written by the Dockerfile).
"""

from __future__ import annotations

import ctypes.util
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from e2e.typed import ConfigError
from jobs import cli

# Variables the job needs inside the container: SLURM's and submitit's own, the GPUs, offline
# switches for the Hugging Face clients.
PASS_ENV = ("SLURM_*", "SUBMITIT_*", "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE",
            "HF_DATASETS_OFFLINE", "HF_HOME", "WANDB_MODE", "WANDB_API_KEY")


# tcmalloc reports every allocation above 1 GiB on stderr by default (a GPT-2 shape cell makes
# some each step): never.
_NO_LARGE_ALLOC_REPORT = "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=1099511627776"


def allocator_env() -> str:
    """`env LD_PRELOAD=libtcmalloc_minimal.so.4 … ` to put before a plain job's python where this
    machine has tcmalloc (its loader knows the library: Debian's and Ubuntu's
    libtcmalloc-minimal4), else "". "" too where LD_PRELOAD is set already: the user's choice
    stands.

    A CPU step allocates and frees the same large tensors every step; glibc maps and zeroes
    them afresh each time, tcmalloc keeps them. At the GPT-2 shape, fp32 (docs/performance.md,
    "The allocator"): local 1.28-1.37x, e2e 1.16-1.36x tokens/s on both CPU kinds, peak RSS
    +4-9% local, -3.5% e2e."""
    lib = ctypes.util.find_library("tcmalloc_minimal")
    if os.environ.get("LD_PRELOAD") or not lib:
        return ""
    return f"env LD_PRELOAD={lib} {_NO_LARGE_ALLOC_REPORT} "


def malloc_in_use(maps: Path = Path("/proc/self/maps")) -> str:
    """The allocator this process runs on: "tcmalloc", "jemalloc" or "mimalloc" when that
    library is mapped into it (so preloaded: nothing here links one), else "glibc"; "unknown"
    without `/proc` (not Linux). A job's log names it (`jobs.run.cell`)."""
    try:
        libs = {line.rsplit("/", 1)[-1] for line in maps.read_text().splitlines()}
    except OSError:
        return "unknown"
    return next((a for a in ("tcmalloc", "jemalloc", "mimalloc")
                 if any(lib.startswith(f"lib{a}") for lib in libs)), "glibc")


def check_path(name: str, value: str) -> None:
    """ConfigError naming the characters of `value` (the option `name`) that `shlex.quote`
    would quote: the path travels unquoted through SLURM's command lines (the printed `--wrap`
    steps, manifest.txt's space-separated cell folders) and inside this module's single-quoted
    `bash -c`, where a quoted path would end the quotes."""
    bad = "".join(sorted({c for c in value if shlex.quote(c) != c}))
    if bad:
        raise ConfigError(f"{name}={value} is invalid: {bad!r} cannot pass through the jobs' "
                          "command lines; use ASCII letters, digits and _ @ % + = : , . / -")


def python_command(container: str, image: str, root: Path, gpus: bool) -> str:
    """ConfigError for a container without an image, or a root or image `check_path` refuses
    (so neither needs quoting below)."""
    if container != "none" and not image:
        raise ConfigError(f"container={container} needs image=<path or name>")
    check_path("root", str(root))
    if container != "none":
        check_path("image", image)
    if container == "none":
        return allocator_env() + shlex.quote(sys.executable)
    if container == "apptainer":
        # The wrapper must not die on USR2 (it stays parent of the job); python still gets it
        # from SLURM, and installs its own handler over the inherited "ignore".
        nv = " --nv" if gpus else ""
        inner = (f"apptainer exec{nv} --bind {root} --bind /etc/slurm "
                 f"--bind /run/munge --pwd /app {image} python")
        return f"bash -c 'trap \"\" USR2; exec {inner} \"$@\"' --"
    if container == "podman":
        envs = " ".join(f'--env "{e}"' for e in PASS_ENV)
        run = (f"podman run --rm -i --name $name --network host --ipc host $gpu "
               f"-v {root}:{root} -v /etc/slurm:/etc/slurm:ro -v /run/munge:/run/munge {envs} "
               f"-w /app {image} python")
        # GPUs go in through NVIDIA's CDI spec, where the node has one (checked on the node).
        cdi = ("gpu=; for f in /etc/cdi/nvidia.yaml /var/run/cdi/nvidia.yaml; do "
               "[ -e $f ] && gpu=\"--device nvidia.com/gpu=all\"; done; " if gpus else "gpu=; ")
        return f"bash -c '{cdi}{_podman_supervisor(run)}' --"
    raise ValueError(f"unknown container runtime {container!r}")


def _podman_supervisor(run: str) -> str:
    """The shell around `podman run` (`run`, which names its container $name): the container is
    not in the step's process tree (conmon is a daemon), so SLURM reaches it only through this.

    - TERM: `podman run` forwards signals by spawning `runc kill`, and SLURM signals the step's
      whole tree with CONT then TERM, so TERM can kill the `runc kill` that forwards CONT; the
      TERM is then never forwarded (podman 4.3, local cluster, 2 loaded cores: lost in 3 of 10
      preemptions, exactly the 3 whose CONT forward was killed; CI failed on it). The shell
      forwards TERM itself with a `podman kill` that the sweep, listed before, does not reach
      (10 of 10, 3 with the CONT forward killed); a second TERM changes nothing in the cell
      (jobs/run/cell.py).
    - USR2 and the other signals a job may get: `podman run` forwards them (one signal, no
      race); the shell only survives them. A `wait` cut short by a trap is waited again, so
      the cell's own exit status (3: requeue me, slurm/array.sbatch) is what the step ends with,
      even when the container exits while the trap runs.
    - SIGKILL (a GraceTime or KillWait that runs out, `scancel --signal=KILL`): kills the
      shell and `podman run` but not the container, which would train on, outside SLURM, and
      hold the cell's lock against its requeued job. A watchdog outside the tree (setsid,
      reparented to init) notices within 2 s that the shell is gone and removes the container.
    """
    return ("name=e2e-${SLURM_JOB_ID:-0}-$$; "
            "trap \"sig=1; podman kill --signal TERM $name >/dev/null 2>&1\" TERM; "
            "trap sig=1 USR2 USR1 INT HUP QUIT; "
            "( setsid bash -c \"while kill -0 $$ 2>/dev/null; do sleep 2; done; "
            "podman rm -f -t 0 $name\" </dev/null >/dev/null 2>&1 & ); "
            f"{run} \"$@\" & p=$!; "
            "while :; do sig=; wait $p; rc=$?; [ -n \"$sig\" ] || break; done; exit $rc")


@dataclass(frozen=True)
class Options:
    container: Literal["none", "apptainer", "podman"]
    root: str
    image: str = ""
    gpus: bool = False


def main(*tokens: str) -> None:
    """For slurm/array.sbatch: the same wrapper as the submitit path."""
    o = cli.parse_options(tokens, Options)
    print(python_command(o.container, o.image, Path(o.root), o.gpus))


if __name__ == "__main__":
    cli.run(main)
