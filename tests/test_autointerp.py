"""The auto-interp step as a user runs it: the smoke grid with `autointerp=true` against a real
llama.cpp server, a killed step resumed, a finished grid rerun, an endpoint that does not
answer, a server the job starts itself; and the formulas, pinned against from-scratch ones."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SMALL = ["autointerp.n_features=3", "autointerp.explain=5", "autointerp.test=2",
         "autointerp.shown=4", "autointerp.simulate=1", "autointerp.model=smollm2"]


def test_formulas_against_from_scratch():
    from e2e.autointerp.score import balanced_accuracy, correlation, mean_ci

    truth = [True, True, True, False, False]
    pred = [True, False, True, False, True]
    assert balanced_accuracy(truth, pred) == pytest.approx((2 / 3 + 1 / 2) / 2)
    a, b = [0, 1, 2, 0, 5.0], [0, 2, 1, 0, 9.0]
    assert correlation(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert correlation(a, [3.0] * 5) == 0.0  # a constant prediction carries nothing
    m, lo, hi = mean_ci([0.2, 0.4, 0.9, float("nan")], seed=0)
    assert m == pytest.approx(0.5) and 0.2 <= lo < m < hi <= 0.9


def test_parsers_and_marking():
    from e2e.autointerp import prompts
    from e2e.autointerp.records import TOP, Record

    assert prompts.parse_list("sure: [1, 0,1]", 3) == [True, False, True]
    assert prompts.parse_list("[1, 0]", 3) is None and prompts.parse_list("[1, 2]", 2) is None
    assert prompts.parse_explanation("x\n[EXPLANATION]: The word \"sea\".\n") == 'The word "sea".'
    assert prompts.parse_explanation("no tag\nlast line") == "last line"
    sim = json.dumps({"activations": [{"token": "a", "activation": 3},
                                      {"token": "b", "activation": 11}, {"token": "c"}]})
    assert prompts.parse_simulation(sim, 3) == [3.0, 0.0, 0.0]
    assert prompts.parse_simulation(sim, 2) is None
    r = Record([" the", " sea", " sea", " is"], np.array([0, 5, 2, 0.0]), TOP)
    assert prompts.highlight(r) == " the<< sea sea>> is"
    assert prompts.markers([r]) == ("<<", ">>")  # prose: Delphi's markers, Delphi's prompts


def test_code_whose_shift_operators_are_markers_is_marked_with_a_pair_it_does_not_hold():
    from e2e.autointerp import prompts
    from e2e.autointerp.records import TOP, Record

    cpp = Record(["std", "::", "cout", " <<", " x", " >>", " 2"], np.array([0, 0, 0, 4, 0, 0, 0.]),
                 TOP)
    pair = prompts.markers([cpp])
    assert pair == ("[[", "]]")
    system, shot, _, user = prompts.explain([cpp], pair)
    assert "marked between [[ and ]]" in system["content"] and "[[ sea]]" in shot["content"]
    assert user["content"] == "Example 1: std::cout[[ <<]] x >> 2"
    fuzz = prompts.classify("fuzzing", "shifts", [prompts.highlight(cpp, pair=pair)], pair)
    assert "marked between [[ and ]]" in fuzz[0]["content"] and "<<" not in fuzz[1]["content"]
    # every pair's characters in the texts: the last pair, its own characters made [ ]
    every = Record(["a<b>", "[c]", "{d}", "\u27e6e\u27e7"], np.array([0, 0, 0, 1.]), TOP)
    pair = prompts.markers([cpp, every])
    assert pair == prompts.MARKERS[-1]
    assert prompts.highlight(every, pair=pair) == "a<b>[c]{d}\u27e6[e]\u27e7"


def _run(*args, timeout=900, **kw):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture(scope="module")
def scored(smoke_root, llm_server, tmp_path_factory):
    """The smoke grid run to the end with the auto-interp step asking the real server."""
    root = tmp_path_factory.mktemp("ai-root")
    shutil.copytree(smoke_root / "smoke", root / "smoke",
                    ignore=lambda d, names: [n for n in names if not n.startswith("_pretrain")
                                             and d == str(smoke_root / "smoke")])
    before = llm_server.requests()
    r = _run("jobs/submit.py", "grid=smoke", f"root={root}", "executor=local", "wait=true",
             "pack=3", "autointerp=true", f"autointerp.base_url={llm_server.url}", *SMALL)
    assert r.returncode == 0, r.stdout + r.stderr
    return root, r, llm_server.requests() - before


def test_every_dictionary_is_scored_where_people_look(scored):
    import h5py

    root, r, sent = scored
    res = root / "smoke" / "results"
    assert "auto-interp job (after the analysis)" in r.stdout
    rows = list(csv.DictReader(open(res / "summary.csv")))
    done = [x for x in rows if x["status"] == "done"]
    entries = {p.stem: json.loads(p.read_text()) for p in (res / "autointerp").glob("*.json")}
    assert done and set(entries) == {x["cell_id"] for x in done}
    for x in done:  # the columns hold each dictionary's scores (empty: nothing usable)
        e = entries[x["cell_id"]]
        assert e["key"] and e["unanswered"] == 0
        assert len(e["features"]) == 3 and all(f["explanation"] for f in e["features"].values())
        for s in ("detection", "fuzzing", "simulation"):
            m, lo, hi = e["scores"][s]
            assert x[f"autointerp_{s}"] == ("" if m is None else str(m))
            assert m is None or lo <= m <= hi
    cached = list((root / "_autointerp_cache").rglob("*.json"))
    assert sent == len(cached) > 0  # every prompt asked once, identical ones across dictionaries
    assert "## Auto-interpretability" in (res / "tables.md").read_text()
    assert "auto-interp detection" in (res / "headline.txt").read_text()
    assert (res / "autointerp_fig9.png").stat().st_size > 10_000
    with h5py.File(res / "results.h5") as f:
        cid = done[0]["cell_id"]
        assert len(f[cid]["autointerp"]["simulation"]) == 3
    data = (res / "browser" / "data")
    assert (data / "autointerp.js").exists()
    assert all((data / f"autointerp-{c}.js").exists() for c in entries)


def test_a_killed_step_resumes_without_asking_again_and_a_rerun_asks_nothing(scored,
                                                                              llm_server):
    root, _, _ = scored
    args = ["jobs/autointerp.py", "grid=smoke", f"root={root}", "seed=1", "concurrency=1"]
    cache = root / "_autointerp_cache"
    n0, asked0 = len(list(cache.rglob("*.json"))), llm_server.requests()
    p = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.time()
    while len(list(cache.rglob("*.json"))) < n0 + 5 and time.time() - t0 < 300:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    answered_before_kill = llm_server.requests() - asked0
    r = _run(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    new = len(list(cache.rglob("*.json"))) - n0
    asked = llm_server.requests() - asked0
    # each prompt answered once; at most the one in flight at the kill (concurrency=1) twice
    assert new <= asked <= new + 1, (new, asked, answered_before_kill)
    assert answered_before_kill >= 5 and "answered from the cache" in r.stderr
    print(f"killed after {answered_before_kill} answers; {asked} requests in all for {new} "
          "prompts")
    again = _run(*args)
    assert again.returncode == 0 and "0 to score" in again.stdout
    assert llm_server.requests() - asked0 == asked


def test_an_endpoint_that_does_not_answer_is_one_line_and_nothing_moves(scored, tmp_path):
    root, _, _ = scored
    dead = "autointerp.base_url=http://127.0.0.1:9/v1"
    r = _run("jobs/submit.py", "grid=smoke", f"root={tmp_path}", "autointerp=true", dead,
             *SMALL)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "no OpenAI-compatible endpoint answers at http://127.0.0.1:9/v1" in r.stderr
    assert not (tmp_path / "smoke").exists()
    res = root / "smoke" / "results"
    summary = (res / "summary.csv").read_bytes()
    r = _run("jobs/autointerp.py", "grid=smoke", f"root={root}", "seed=2",
             "base_url=http://127.0.0.1:9/v1")
    assert r.returncode == 1 and "nothing was sent" in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and (res / "summary.csv").read_bytes() == summary


def test_a_server_the_job_starts_itself(scored, llm_server):
    """`autointerp.serve=`: the job starts the server (here llama.cpp's, as vLLM would be on a
    GPU), waits for it, scores and stops it."""
    root, _, _ = scored

    def servers() -> int:
        ps = subprocess.run(["pgrep", "-f", "llama_cpp.server"], capture_output=True, text=True)
        return len(ps.stdout.split())

    n = servers()
    cmd = (f"{REPO / '.venv-llm/bin/python'} -m llama_cpp.server --model {{model}} "
           "--host 127.0.0.1 --port {port}")
    r = _run("jobs/autointerp.py", "grid=smoke", f"root={root}", "base_url=", "seed=3",
             f"serve={llm_server.gguf}", f"serve_command={cmd}", "model=")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "auto-interp: serving" in r.stdout and "4 to score" in r.stdout
    assert servers() == n  # stopped


def test_the_dry_run_and_the_generated_jobs_say_what_the_step_asks(tmp_path):
    r = _run("jobs/submit.py", "grid=smoke", f"root={tmp_path}", "dry_run=true",
             "autointerp=true", "autointerp.serve=Qwen/Qwen2.5-7B-Instruct",
             "autointerp.price_per_mtok=0.5")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("then: auto-interp"))
    assert "vllm serve Qwen/Qwen2.5-7B-Instruct" in line and "requests" in line and "$" in line
    r = _run("jobs/submit.py", "grid=smoke", f"root={tmp_path}", "submit=false",
             "executor=slurm", "autointerp=true", "autointerp.serve=Qwen/Qwen2.5-7B-Instruct",
             "autointerp.api_key_env=E2E_TEST_KEY", env={**os.environ, "E2E_TEST_KEY": "sk-x9"})
    assert r.returncode == 0, r.stderr
    job = next(x for x in r.stdout.splitlines() if "smoke-autointerp" in x)
    assert "--dependency=afterany:$ana" in job and "--gres=gpu:1" in job
    assert "step=autointerp" in job
    saved = json.loads((tmp_path / "smoke" / "autointerp.json").read_text())
    assert saved["serve"] == "Qwen/Qwen2.5-7B-Instruct" and saved["api_key_env"] == "E2E_TEST_KEY"
    assert "sk-x9" not in json.dumps(saved) + r.stdout + r.stderr  # the key itself: nowhere


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver (tests/setup-chromium.sh)")
def test_the_scores_in_the_browser(scored):
    """A scored feature's page shows its explanation and scores; the tables have a score
    column; the index shows Fig. 9 and the new headline; no console error, no network."""
    from selenium.webdriver.common.by import By

    from benchmarks.bench_browser import chromium, console_errors, open_page, requests

    root, _, _ = scored
    folder = root / "smoke" / "results" / "browser"
    base = folder.as_uri()
    entry = next(json.loads(p.read_text()) | {"cell": p.stem}
                 for p in sorted((root / "smoke" / "results" / "autointerp").glob("*.json")))
    cell, (f, got) = entry["cell"], next(iter(entry["features"].items()))
    driver = chromium()
    try:
        open_page(driver, f"{base}/index.html", "tbody tr")
        heads = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "th")]
        assert "auto-interp" in heads
        assert "autointerp_fig9.png" in driver.page_source
        assert "auto-interp detection" in driver.find_element(By.CSS_SELECTOR, "pre").text
        open_page(driver, f"{base}/index.html#page=dictionary&cell={cell}", "tbody tr")
        assert "auto-interp" in driver.find_element(By.CSS_SELECTOR, "p.autointerp").text
        open_page(driver, f"{base}/index.html#page=feature&cell={cell}&f={f}",
                  "div.autointerp")
        assert driver.find_element(By.CSS_SELECTOR, ".explanation").text == \
            got["explanation"].strip()
        assert console_errors(driver) == []
        assert all(u.startswith(base) for u in requests(driver))
    finally:
        driver.quit()
