"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium.

The page is loaded while traffic flows; the NF names must appear and a packet
counter must move.  A screenshot is kept in test-artifacts/ (not committed).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.integration.conftest import status

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (make deps)")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1300", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def test_dashboard_shows_nfs_and_moving_counters(deploy, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    dep = deploy(["--port", "gen:size=64,flows=32,rate=20k", "--port", "null",
                  "--default-chain", "1,2,out:1", "--web", "127.0.0.1:0"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.start_nf(["basic_monitor", "--service", "2", "--interval", "0"])
    dep.wait_running(2)
    st = status(dep.name)
    url = st["manager"]["web"]
    ids = {n["name"]: n["id"] for n in st["nfs"]}

    browser.get(url)
    # The tables are rebuilt on every update: an element found a moment ago can be gone.
    wait = WebDriverWait(browser, 20, ignored_exceptions=[StaleElementReferenceException])
    for name, nf_id in ids.items():
        wait.until(ec.text_to_be_present_in_element((By.ID, f"nf-{nf_id}-name"), name))
    wait.until(ec.text_to_be_present_in_element((By.ID, "conn"), "live"))

    def tx() -> int:
        return int(browser.find_element(By.ID, "port-1-tx").text or 0)

    first = wait.until(lambda d: tx() + 1) - 1  # read once the cell stands still
    wait.until(lambda d: tx() > first)
    graph = browser.find_element(By.ID, "graph").text
    assert "simple_forward" in graph and "basic_monitor" in graph
    assert "µs" in browser.page_source
    # At this light load the manager packs the pipeline onto one CPU (tests/integration/
    # test_packing.py proves that); the page says where the pipeline and each NF run.
    wait.until(lambda d: d.find_element(By.ID, "mgr-packing").text.startswith(("packed on CPU", "spread")))
    packed = status(dep.name)["manager"]["packing"]["packed_on"]
    if packed is not None:
        wait.until(ec.text_to_be_present_in_element((By.ID, "mgr-packing"), f"packed on CPU {packed}"))
        wait.until(ec.text_to_be_present_in_element((By.ID, f"nf-{ids['simple_forward']}-cpu"), str(packed)))
    # Where the time goes: the RX worker spends time on every packet, so its cost per packet
    # shows once two samples are apart; so does each NF's.
    wait.until(lambda d: d.find_element(By.ID, "worker-0-ns").text.isdigit())
    wait.until(lambda d: d.find_element(By.ID, f"nf-{ids['simple_forward']}-ns").text.isdigit())
    assert browser.find_element(By.ID, "worker-1").text.startswith("1 TX 0")
    time.sleep(2.5)  # let the charts draw a few points before the picture
    wait.until(lambda d: browser.find_element(By.ID, f"nf-{ids['simple_forward']}-lat").text != "–")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    logs = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not logs, logs
    assert os.environ.get("ONVM_RUNTIME_DIR")  # ran in the test's own runtime directory
