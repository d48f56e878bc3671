"""The service's web page in a real headless browser (Debian's chromium and chromium-driver,
driven by selenium): upload pages, watch the job finish, search, open a hit and see its map.

``make test`` installs the browser where it is root with apt (CI is); elsewhere this skips and
says why, and in CI a missing browser fails. ``COLLFM2_SCREENSHOT=1`` also writes the README's
screenshot (docs/images/serve.png)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.demo import SAMPLE_PAGES, render_page

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    missing = [n for n, p in (("chromium", CHROMIUM), ("chromedriver (chromium-driver)", DRIVER)) if p is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service as DriverService
    except ImportError:
        missing.append("the selenium package (the dev extra)")
    if missing:
        msg = f"no {', '.join(missing)} (make test installs them as root with apt)"
        if IN_CI:
            pytest.fail(f"CI must run the browser test: {msg}")
        pytest.skip(msg)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1100",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=DriverService(executable_path=DRIVER), options=opts)
    yield driver
    driver.quit()


def test_upload_search_and_see_a_map(browser, tiny_bundle: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_serve import _Running

    from runtime import ColLFM2
    from runtime.serve.http import ServeOptions
    from runtime.serve.service import Service

    names = list(SAMPLE_PAGES)
    first = tmp_path / names[0]
    render_page(SAMPLE_PAGES[names[0]]).save(first)
    idx = tmp_path / "idx"
    cmd = [sys.executable, "-m", "runtime", "index", "add", "--index", str(idx), "--bundle", str(tiny_bundle),
           "--precision", "fp32", str(first)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    uploads = []
    for name in names[1:3]:
        render_page(SAMPLE_PAGES[name]).save(tmp_path / name)
        uploads.append(str(tmp_path / name))
    model = ColLFM2.from_pretrained(tiny_bundle, precision="fp32")
    r = _Running(Service(model, "local", str(idx)), ServeOptions(log=False))
    wait = WebDriverWait(browser, 60)
    try:
        browser.get(f"http://127.0.0.1:{r.port}/")
        assert "collfm2-edge" in browser.title
        browser.find_element(By.ID, "files").send_keys("\n".join(uploads))
        wait.until(
            lambda d: d.find_element(By.ID, "progress").get_attribute("data-state") in ("done", "failed", "error")
        )
        progress = browser.find_element(By.ID, "progress").text
        assert "done - 2 page(s) stored" in progress, progress
        box = browser.find_element(By.ID, "q")
        box.send_keys("total amount due on the invoice")
        browser.find_element(By.ID, "go").click()
        loaded = "return Array.from(document.querySelectorAll('.hit img')).filter(i => i.naturalWidth > 0).length"
        wait.until(lambda d: d.execute_script(loaded) == 3)  # the indexed page and both uploads, with images
        assert "RANDOM" in browser.find_element(By.ID, "status").text
        browser.find_elements(By.CSS_SELECTOR, ".hit")[0].click()
        shown = "const m = document.getElementById('map'); return m.dataset.loaded === '1' && m.naturalWidth > 0"
        wait.until(lambda d: d.execute_script(shown))
        buttons = browser.find_elements(By.CSS_SELECTOR, "#tokens button")
        assert [b.text for b in buttons[:2]] == ["max", "sum"] and len(buttons) > 3  # and one per query token
        before = browser.find_element(By.ID, "map").get_attribute("src")
        buttons[3].click()  # a query token's own map
        wait.until(lambda d: d.find_element(By.ID, "map").get_attribute("src") != before)
        wait.until(lambda d: d.execute_script("return document.getElementById('map').naturalWidth > 0"))
        assert "on" in buttons[3].get_attribute("class")
        shot = tmp_path / "serve.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("COLLFM2_SCREENSHOT"):
            (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, ROOT / "docs" / "images" / "serve.png")
    finally:
        r.close()
