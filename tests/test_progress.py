"""The local run's status line: its estimate of the time left, per chip."""

from dataclasses import replace

import pytest

from jobs.plan.make import make_plan
from jobs.run.progress import Progress, machine_speed


def test_the_estimate_scales_training_by_the_chip_and_the_rest_by_their_own_pace(tmp_path):
    """grid=demo-fp32's tasks at its measured minutes: training tasks (the cells, the
    fine-tune at its fraction of a pack's minutes) times the chip's factor, the model's build,
    collector and analysis not; once tasks finish, each group goes at its own observed pace."""
    plan = make_plan(["grid=demo-fp32", f"root={tmp_path}", "dry_run=true"])
    m, f = plan.grid.local_minutes, plan.grid.finetune.fractions[0]
    p = Progress.for_plan(plan, m, speed=3.0)
    assert [t.kind for t in p.tasks] == ["build", "sae", "sae", "collect", "analyze"]
    expected = [m["pretrain"], 3 * m["sae"], 3 * m["finetune"] * f, m["collect"], m["analyze"]]
    assert [t.expected_s / 60 for t in p.tasks] == pytest.approx(expected)
    assert p.seconds_left(0.0) == pytest.approx(60 * sum(expected))
    build, local, ft, collect, analyze = p.tasks
    build.spent_s = 2 * build.expected_s  # the build went at half speed: so will the analysis
    assert p.seconds_left(0.0) == pytest.approx(
        local.expected_s + ft.expected_s + 2 * (collect.expected_s + analyze.expected_s))
    local.spent_s = 0.5 * local.expected_s  # the cells twice as fast as the chip's factor said
    assert p.seconds_left(0.0) == pytest.approx(
        0.5 * ft.expected_s + 2 * (collect.expected_s + analyze.expected_s))
    assert not root_written(tmp_path)


def root_written(root) -> bool:
    return any(root.iterdir())


def test_machine_speed_is_the_measuring_machines_matmul_rate_over_this_ones(tmp_path):
    plan = make_plan(["grid=demo-fp32", f"root={tmp_path}", "dry_run=true"])
    cfg = plan.cells[0].cfg
    assert machine_speed(replace(plan.grid, local_gflops=0.0), cfg) == (1.0, "")
    # a measuring machine 10^6 times faster or slower: the factor is clamped to [0.2, 20]
    fast, line = machine_speed(replace(plan.grid, local_gflops=1e9), cfg)
    assert fast == 20.0 and "estimates x20.00" in line and " matmul at " in line
    assert machine_speed(replace(plan.grid, local_gflops=1e-3), cfg)[0] == 0.2
