"""Running a plan: the written plan (cell configs, manifests, plain `sbatch` lines), submitit's
SLURM arrays with their dependencies or local processes, one pack as a job, the status line.
The top room: it may import every other one, and none imports it."""
