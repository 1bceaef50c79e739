"""The command that stands for `python` in a job: plain, or inside an Apptainer/podman image.

submitit puts it verbatim before `-u -m submitit.core._submit <folder>`. The shared root is
bound at the same path; `/etc/slurm` and munge's socket are bound so that the requeue after a
preemption (`scontrol requeue`, run by submitit inside the container) reaches the controller.
"""

from __future__ import annotations

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


def python_command(container: str, image: str, root: Path, gpus: bool) -> str:
    if container != "none" and not image:
        raise ConfigError(f"container={container} needs image=<path or name>")
    root = shlex.quote(str(root))
    if container == "none":
        return shlex.quote(sys.executable)
    if container == "apptainer":
        # The wrapper must not die on USR2 (it stays parent of the job); python still gets it
        # from SLURM, and installs its own handler over the inherited "ignore".
        nv = " --nv" if gpus else ""
        inner = (f"apptainer exec{nv} --bind {root} --bind /etc/slurm "
                 f"--bind /run/munge --pwd /app {shlex.quote(image)} python")
        return f"bash -c 'trap \"\" USR2; exec {inner} \"$@\"' --"
    if container == "podman":
        # podman's container is not a child of the SLURM step, so `podman run` proxies USR2.
        # GPUs go in through NVIDIA's CDI spec, where the node has one (checked on the node).
        envs = " ".join(f'--env "{e}"' for e in PASS_ENV)
        run = (f"podman run --rm -i --network host --ipc host $gpu -v {root}:{root} "
               f"-v /etc/slurm:/etc/slurm:ro -v /run/munge:/run/munge {envs} "
               f"-w /app {shlex.quote(image)} python")
        cdi = ("gpu=; for f in /etc/cdi/nvidia.yaml /var/run/cdi/nvidia.yaml; do "
               "[ -e $f ] && gpu=\"--device nvidia.com/gpu=all\"; done; " if gpus else "gpu=; ")
        return f"bash -c '{cdi}exec {run} \"$@\"' --"
    raise ValueError(f"unknown container runtime {container!r}")


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
