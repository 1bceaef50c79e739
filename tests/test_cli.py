"""Every entry point: bad input is one line on stderr (exit status 1), before anything is
written; `--key=value` means `key=value`."""

import subprocess
import sys
from pathlib import Path

import pytest

from e2e.config import ConfigError
from jobs.plan.make import make_plan

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args,message", [
    (["seeds=[1]", "sweep.seed=[0,1]"], "seeds= and sweep.seed= both given"),
    (["settings=[local]", "lambdas.e2e=[3]"], "e2e is not among the settings this run trains"),
    (["root="], "root= is empty"),
    (["data.context_length=128"], "data.context_length=128 is invalid: the model has 64"),
])
def test_conflicting_or_impossible_options_are_refused(args, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        make_plan(["grid=smoke", f"root={tmp_path}", "dry_run=true", *args])


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_double_dash_options_reach_the_entry_point(tmp_path):
    r = _run("jobs/submit.py", "grid=smoke", f"root={tmp_path / 'root'}", "--dry_run=true")
    assert r.returncode == 0 and "grid smoke:" in r.stdout, r.stderr
    assert not (tmp_path / "root").exists()  # a dry run writes nothing


@pytest.mark.parametrize("args,message", [
    (["-m", "jobs.cell", "/nonexistent/cell"], "is not a cell folder"),
    (["jobs/collect.py", "grid=smoke", "root=/nonexistent"], "does not exist"),
    (["jobs/analyze.py", "root=/nonexistent"], "missing grid="),
    (["jobs/analyze.py", "grid=smoke", "clustering=bogus"], "clustering='bogus' is invalid"),
    (["-m", "jobs.run.launch", "step=pretrain", "grid=paper"], "has no pre-training"),
    (["-m", "jobs.run.launch", "step=collect", "grid=bogus"], "grid='bogus' is invalid"),
    (["-m", "jobs.plan.containers", "container=podman", "root=/x"], "needs image="),
])
def test_bad_input_is_one_line(args, message):
    r = _run(*args)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
