"""`make gpu-check`'s CPU-sized variant: the same code as on a GPU, so it never rots."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_every_part_on_a_small_shape(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "size=cpu", "steps=1",
                        f"out={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("float32  compiled local", "bfloat16 eager    e2e_ds", "(bit-identical)",
                 "ksvd cell: K 256", "metrics 0 (equal)"):
        assert line in r.stdout, r.stdout
    assert (tmp_path / "gpu_check.json").exists()
