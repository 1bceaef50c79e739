"""The feature browser in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
through selenium): page load times, and screenshots for the docs.

    python benchmarks/bench_browser.py root=runs grid=demo [n_features=46080 shots=docs]

Loads the grid's `results/browser/` from file:// with the network off, and prints, in ms, the
time to a rendered page (the first table row, or the first context) for the index, the
largest dictionary, a feature page, and a synthetic dictionary page of `n_features` features
(the paper's 46,080: the table, the density histogram and a sort of every row); with `shots`,
saves screenshots of the index, a dictionary and a feature page there. `chromium()`,
`requests()` and `console_errors()` are what tests/test_browser.py drives the pages with.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from jobs.cli import parse_options, run


def chromium(width: int = 1280, height: int = 1400):
    """A headless Chromium whose console and network log can be read; every request that is
    not a file is sent to a closed local port (the network is off)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--proxy-server=http://127.0.0.1:9",
              "--proxy-bypass-list=<-loopback>", "--host-resolver-rules=MAP * ~NOTFOUND",
              "--disable-background-networking", "--disable-component-update",
              "--no-first-run"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=opts, service=service)


def requests(driver) -> list[str]:
    """URLs the pages requested since the last call (from the performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def console_errors(driver) -> list[str]:
    """Console messages of level SEVERE since the last call (script errors, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_page(driver, url: str, ready_css: str, timeout_s: float = 60) -> float:
    """Opens url and waits until `ready_css` matches; returns the milliseconds it took."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    t0 = time.perf_counter()
    driver.get("about:blank")
    driver.get(url)
    WebDriverWait(driver, timeout_s, poll_frequency=0.02).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ready_css))
    return (time.perf_counter() - t0) * 1e3


def _synthetic(folder: Path, like: str, n: int) -> str:
    """A copy of dictionary `like`'s summary with n features (values repeated), as cell
    `synthetic`."""
    text = (folder / "data" / f"cell-{like}.js").read_text()
    body = json.loads(text[text.index(",") + 1:text.rindex(")")])
    for k in ("density", "max", "mean", "top_pos", "shard", "alive"):
        if body.get(k) is not None:
            body[k] = [body[k][i % len(body[k])] for i in range(n)]
    body["shard"] = [-1] * n
    body.update(id="synthetic", n_dict=n)
    (folder / "data" / "cell-synthetic.js").write_text(
        f"BROWSER.put(\"cell/synthetic\",{json.dumps(body)});\n")
    return "synthetic"


def main(*tokens: str) -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Opts:
        root: str = "runs"
        grid: str = "demo"
        n_features: int = 46_080
        shots: str = ""

    o = parse_options(tokens, Opts)
    src = Path(o.root).resolve() / o.grid / "results" / "browser"
    index = json.loads((src / "data" / "index.js").read_text().split(",", 1)[1][:-3])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "browser"
        shutil.copytree(src, folder)
        big = max(index["cells"], key=lambda c: (c["n_dict"], c["pages"]))
        cell = json.loads((folder / "data" / f"cell-{big['id']}.js").read_text()
                          .split(",", 1)[1][:-3])
        feature = max(range(big["n_dict"]), key=lambda f: (cell["shard"][f] >= 0,
                                                           cell["density"][f] or 0))
        syn = _synthetic(folder, big["id"], o.n_features)
        base = folder.as_uri()
        driver = chromium()
        try:
            pages = [("index", "index", "index.html", "tbody tr"),
                     ("dictionary", f"dictionary {big['id']} ({big['n_dict']} features)",
                      f"index.html#page=dictionary&cell={big['id']}", "tbody tr"),
                     ("feature", f"feature {big['id']} #{feature}",
                      f"index.html#page=feature&cell={big['id']}&f={feature}", "#top .ctx"),
                     ("", f"dictionary of {o.n_features} features (synthetic)",
                      f"index.html#page=dictionary&cell={syn}", "tbody tr")]
            for shot, name, url, ready in pages:
                ms = [open_page(driver, f"{base}/{url}", ready) for _ in range(3)]
                print(f"{name}: {min(ms):.0f} ms to render (best of 3)")
                if o.shots and shot:
                    Path(o.shots).mkdir(parents=True, exist_ok=True)
                    driver.save_screenshot(str(Path(o.shots) / f"browser-{shot}.png"))
            t0 = time.perf_counter()
            driver.find_element("css selector", "th[data-col='1']").click()  # density
            driver.find_element("css selector", "tbody tr")
            print(f"sort of {o.n_features} rows by density: "
                  f"{(time.perf_counter() - t0) * 1e3:.0f} ms")
            errors = console_errors(driver)
            outside = [u for u in requests(driver) if not u.startswith((base, "about:", "data:"))]
            print(f"console errors: {len(errors)}, requests outside the folder: {len(outside)}")
        finally:
            driver.quit()


if __name__ == "__main__":
    run(main)
