"""The feature browser as a person uses it: the smoke grid's browser, opened from file:// in a
real headless Chromium with the network off (benchmarks/bench_browser.py drives it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", REPO / "artifacts"))
HAVE_CHROMIUM = bool(shutil.which("chromium") and shutil.which("chromedriver"))


@pytest.fixture(scope="module")
def smoke_browser(tmp_path_factory) -> Path:
    """The smoke grid run locally to the end: cells, collector, analysis and its browser."""
    root = tmp_path_factory.mktemp("browser-root")
    r = subprocess.run([sys.executable, "jobs/submit.py", "grid=smoke", f"root={root}",
                        "executor=local", "wait=true", "pack=3"], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "features: " in r.stdout and "browser/index.html" in r.stdout
    return root / "smoke"


def _data(folder: Path, name: str):
    text = (folder / "data" / f"{name}.js").read_text()
    return json.loads(text.split(",", 1)[1].rstrip().removesuffix(");"))


def _known_top_context(grid: Path, cell: str):
    """The feature with the largest activation of `cell` and its top position, computed here
    from the saved SAE, the model and the eval tokens, with one full (tokens, features) matrix
    (the browser keeps running top-k per chunk)."""
    from e2e.data.tokens import eval_stream
    from e2e.io import read_cell_config
    from e2e.model import load_model, resid_pre
    from e2e.saelens import load_saelens
    from jobs.plan.analysis_cost import BROWSER_TOKENS

    cfg = read_cell_config(grid / cell)
    model = load_model(cfg.model)
    sae, _ = load_saelens(grid / cell / "sae")
    ctx = cfg.data.context_length
    tokens = eval_stream(cfg.data, model.tokenizer, cfg.seed).next_batch(BROWSER_TOKENS // ctx)
    with torch.no_grad():
        codes = sae.encode(resid_pre(model, tokens, cfg.layer).float()).reshape(-1, sae.n_dict)
    f = int(codes.max(0).values.argmax())
    pos = int(codes[:, f].argmax())
    r, c = divmod(pos, ctx)
    ids = tokens[r, max(0, c - 8):min(ctx, c + 9)].tolist()
    text = "".join(model.tokenizer.decode([i]).replace("\n", "↵").replace(" ", "·")
                   for i in ids)
    return f, pos, text


def test_the_browser_files_stand_alone(smoke_browser):
    folder = smoke_browser / "results" / "browser"
    index = _data(folder, "index")
    done = [d for d in smoke_browser.iterdir() if d.name.startswith("L")]
    assert {c["id"] for c in index["cells"]} == {d.name for d in done}
    # every live feature (alive in training or firing here) has a page
    assert all(c["pages"] == c["live"] >= c["firing"] > 0 for c in index["cells"])
    html = (folder / "index.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert "http" not in (folder / "browser.js").read_text().replace("http://www.w3.org", "")
    cost = json.loads((smoke_browser / "results" / "browser.json").read_text())
    assert cost["pages"] == sum(c["pages"] for c in index["cells"]) and cost["bytes"] > 0


def test_large_dictionaries_outside_the_trio_get_a_sample_of_pages(smoke_browser, tmp_path):
    from jobs.analysis import browser
    from jobs.report.results import read_grid

    grid = tmp_path / "smoke"
    shutil.copytree(smoke_browser, grid, ignore=shutil.ignore_patterns("browser"))
    cells = read_grid(grid)
    trio = next(c.id for c in cells if c.cfg.loss.setting == "e2e")
    cost = browser.build(grid, cells, {trio}, {}, browser.Settings(full_max=64, sample=10))
    index = _data(grid / "results" / "browser", "index")
    for c in index["cells"]:  # smoke's dictionaries have 128 elements, > full_max
        assert c["pages"] == (c["live"] if c["id"] == trio else min(10, c["live"])), c
    assert cost["pages"] == sum(c["pages"] for c in index["cells"])
    assert not list(grid.glob("results/.browser-*"))  # written beside, renamed into place


@pytest.mark.skipif(not HAVE_CHROMIUM and os.environ.get("CI") != "true",
                    reason="needs Debian's chromium and chromium-driver (tests/setup-chromium.sh)")
def test_the_browser_in_a_headless_chromium_with_the_network_off(smoke_browser):
    from selenium.webdriver.common.by import By

    from benchmarks.bench_browser import chromium, console_errors, open_page, requests

    folder = smoke_browser / "results" / "browser"
    base = folder.as_uri()
    local = next(c for c in _data(folder, "index")["cells"] if c["setting"] == "local")
    f, pos, text = _known_top_context(smoke_browser, local["id"])
    driver = chromium()
    try:
        open_page(driver, f"{base}/index.html", "tbody tr")
        assert len(driver.find_elements(By.CSS_SELECTOR, "tbody tr")) == 4
        # the dictionary's table sorts by density, descending then ascending
        open_page(driver, f"{base}/index.html#page=dictionary&cell={local['id']}",
                  "tbody tr")
        head = driver.find_element(By.CSS_SELECTOR, "th[data-col='1']")
        for want in ("down", "up"):
            head.click()
            col = [float(td.text) for td in driver.find_elements(
                By.CSS_SELECTOR, "tbody tr td:nth-child(2)")]
            assert len(col) > 10 and col == sorted(col, reverse=want == "down"), want
            assert head.get_attribute("class") == want
        # the known feature's top context, found independently above, heads its page
        open_page(driver, f"{base}/index.html#page=feature&cell={local['id']}&f={f}",
                  "#top .ctx")
        first = driver.find_element(By.CSS_SELECTOR, "#top .ctx")
        assert int(first.get_attribute("data-pos")) == pos
        assert first.text.replace("\n", "") == text
        assert driver.find_elements(By.CSS_SELECTOR, "#top .tok.max")
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart rect")) == 32  # histogram
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "browser-feature-smoke.png"))
        # a multi-dimensional cluster's page: its PC planes with a point per token
        owner = next(c for c in _data(folder, "index")["cells"] if c["clusters"])
        cluster = f"cell={owner['id']}&c={owner['clusters'][0]}"
        open_page(driver, f"{base}/index.html#page=cluster&{cluster}", "svg.plane circle")
        assert driver.find_elements(By.CSS_SELECTOR, "svg.plane circle title")
        assert console_errors(driver) == []
        urls = requests(driver)
        assert urls and all(u.startswith(base) for u in urls), urls
        # a mangled link says so on the page instead of leaving it blank
        open_page(driver, f"{base}/index.html#page=feature&cell={local['id']}&f=%E0%A4%A",
                  "p.error")
        # a link whose cell climbs out of the folder loads nothing outside it (issue 43)
        (folder.parent / "evil.js").write_text('document.title = "evil";\n')
        requests(driver), console_errors(driver)  # drained: the mangled link's error
        open_page(driver, f"{base}/index.html#page=dictionary&cell=x/../../../evil", "p.note")
        assert driver.find_element(By.CSS_SELECTOR, "p.note").text == \
            "no such dictionary: x/../../../evil"
        assert driver.title != "evil" and console_errors(driver) == []
        urls = requests(driver)
        assert urls and all(u.startswith(base + "/") for u in urls), urls
        # a page name that is an Object property is no page: the grid's index
        open_page(driver, f"{base}/index.html#page=__proto__&cell={local['id']}", "tbody tr")
        assert console_errors(driver) == []
    finally:
        driver.quit()
    assert (ARTIFACTS / "browser-feature-smoke.png").stat().st_size > 10_000


def test_skipped_and_excluded_positions_have_no_codes_in_the_scan_or_the_windows():
    """data.skip_positions=1 and a separator mid-row (data.exclude_tokens): position 0 of
    every row and the separator code nothing in the page statistics and in the context
    windows (the dictionary never acted there), as the browser builds them."""
    import numpy as np
    import torch

    from e2e.analysis import features
    from e2e.model import Positions

    def encode(a):  # every element fires everywhere
        return a[:, :2].abs() + 1

    acts = torch.randn(3, 8, 4)
    tokens = torch.ones(3, 8, dtype=torch.long)
    tokens[1, 4] = 0  # a separator mid-row
    keep = Positions(1, (0,)).kept(tokens)
    st = features.scan(encode, acts, 2, k=30, bins=4, intervals=2, per_interval=1, keep=keep)
    top = st.top_pos[st.top_pos >= 0]
    assert (top % 8 != 0).all() and 12 not in top and len(top) == 2 * (3 * 7 - 1)
    win = features.window_codes(encode, acts, np.array([0, 1]), np.array([1, 13]), 1, keep)
    assert win[0, 0] == 0 and win[1, 0] == 0 and (win[:, 1:] > 0).all()  # cols 0 and 4
