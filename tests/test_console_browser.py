"""The console used as a person uses it: headless Chromium driven by selenium, images sent with DCMTK.

Skips, naming the Debian package, where ``chromium``, ``chromium-driver`` or
DCMTK is absent.  With ``GATEWAY_CONSOLE_SCREENSHOTS=<folder>`` each page is
also saved there as a PNG, to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.data import get_testdata_file

from gateway.config import load_config
from gateway.record import RECORD_FILE, ProofRecord
from gateway.spool import DEAD
from tests.conftest import DicomPeer, free_port, wait_until
from tests.tools import require_dcmtk

pytestmark = pytest.mark.interop

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "console-test-token"
SENT = ("CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm")

_CONFIG = """
[server]
ae_title = "GATEWAY"
host = "127.0.0.1"
port = {port}
[spool]
directory = "spool"
[compression]
transfer_syntax = "RLELossless"
processes = 0
[retry]
max_attempts = 1
base_seconds = 0.2
cap_seconds = 1.0
[web]
host = "127.0.0.1"
port = {web_port}
token_file = "web.token"
[[destinations]]
name = "archive"
kind = "folder"
path = "archive"
[[destinations]]
name = "pacs"
kind = "dicom"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
timeout_seconds = 2
"""
_EXTRA = """
[[destinations]]
name = "extra"
kind = "folder"
path = "archive_extra"
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip("chromium is not installed (Debian package 'chromium')")
    if not (os.path.isfile(CHROMEDRIVER) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("chromedriver is not installed (Debian package 'chromium-driver')")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path / "chromium-profile"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1300,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _storescu(port: int, files: list[str]) -> None:
    storescu = require_dcmtk("storescu")
    result = subprocess.run([storescu, "-aet", "MODALITY", "-aec", "GATEWAY", "-R", "127.0.0.1", str(port), *files],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _metrics(web_port: int) -> dict[tuple[str, tuple], float]:
    request = urllib.request.Request(f"http://127.0.0.1:{web_port}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _follow(driver, element) -> None:
    """Click `element` and wait until the browser has left the page it was on (a link or a form's submit)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    # A mark on the page's window: the next document gets a window of its own, without it.  (Waiting
    # for the old <html> to go stale depends on how the driver words a node of a closed document.)
    driver.execute_script("window.leavingThisPage = true")
    element.click()
    WebDriverWait(driver, 60, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script("return !window.leavingThisPage && document.readyState === 'complete'"))


def _shot(driver, name: str) -> None:
    folder = os.environ.get("GATEWAY_CONSOLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_console_in_a_browser(tmp_path: Path, browser, gateway_factory) -> None:
    from selenium.webdriver.common.by import By

    require_dcmtk("storescu")
    driver = browser
    (tmp_path / "web.token").write_text(TOKEN + "\n")
    toml = tmp_path / "gateway.toml"
    ports = {"port": free_port(), "web_port": free_port(), "pacs_port": free_port()}
    toml.write_text(_CONFIG.format(**ports))
    gateway = gateway_factory(load_config(toml))
    base = f"http://127.0.0.1:{gateway.web.port}"
    files = [get_testdata_file(name) for name in SENT]

    # A real send; the PACS is down and max_attempts is 1: each instance becomes a dead letter there.
    _storescu(gateway.port, files)
    assert gateway.wait_idle(120)
    assert wait_until(lambda: gateway.spool.count_jobs(DEAD, "pacs") == len(SENT), 60)
    record = ProofRecord(gateway.spool.root / RECORD_FILE)
    entries = list(record.since(0))
    assert len(entries) == len(SENT)

    # Log in with the token.
    driver.get(f"{base}/")
    assert driver.current_url.endswith("/login")
    _shot(driver, "login")
    driver.find_element(By.ID, "token").send_keys("not the token")
    _follow(driver, driver.find_element(By.ID, "login"))
    assert "That is not the token" in driver.find_element(By.ID, "login-failed").text
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    _follow(driver, driver.find_element(By.ID, "login"))
    assert driver.find_element(By.TAG_NAME, "h1").text == "Overview"
    assert "gateway_session" in {c["name"] for c in driver.get_cookies() if c.get("httpOnly")}

    # The overview's counts are the record's and the metrics'.
    metrics = _metrics(gateway.web.port)
    received = int(driver.find_element(By.ID, "total-received").text)
    delivered = int(driver.find_element(By.ID, "total-delivered").text)
    dead = int(driver.find_element(By.ID, "total-dead").text)
    recompressed = int(driver.find_element(By.ID, "total-recompressed").text)
    passed = int(driver.find_element(By.ID, "total-passed-through").text)
    assert received == len(entries) == metrics[("dicom_gateway_received_instances_total", ())] == len(SENT)
    assert delivered == sum(v for (name, _), v in metrics.items()
                            if name == "dicom_gateway_forwarded_instances_total") == len(SENT)
    assert dead == len(SENT) == metrics[("dicom_gateway_dead_letters", (("destination", "pacs"),))]
    assert recompressed == sum(1 for e in entries if e["outcome"] == "recompressed")
    assert passed == sum(v for (name, _), v in metrics.items() if name == "dicom_gateway_passed_through_total")
    assert recompressed + passed == len(SENT)
    bytes_title = driver.find_element(By.ID, "total-received-bytes").get_attribute("title")
    assert bytes_title == f"{int(metrics[('dicom_gateway_received_bytes_total', ())])} bytes"
    last_minute = driver.find_element(By.ID, "rate-60").text.split()
    assert last_minute[:2] == ["last", "minute"] and float(last_minute[2]) == len(SENT)
    for plot in (driver.find_element(By.ID, "throughput-instances"), driver.find_element(By.ID, "throughput-bytes")):
        assert wait_until(lambda: driver.execute_script("return arguments[0].naturalWidth", plot) > 0, 30)
    codecs = driver.find_element(By.ID, "saved-by-codec").text
    assert "RLE Lossless" in codecs
    _shot(driver, "overview")

    # Search: the proof of one instance, all its stages.
    entry = next(e for e in entries if e["outcome"] == "recompressed")
    _follow(driver, driver.find_element(By.LINK_TEXT, "Search"))
    _shot(driver, "search-recent")
    driver.find_element(By.ID, "uid").send_keys(entry["sop_instance_uid"])
    _follow(driver, driver.find_element(By.ID, "find"))
    proof = driver.find_element(By.CSS_SELECTOR, "section.proof")
    assert proof.find_element(By.CSS_SELECTOR, ".sop").text == entry["sop_instance_uid"]
    assert proof.find_element(By.CSS_SELECTOR, ".original-hash").text == entry["pixel_hash"]
    assert proof.find_element(By.CSS_SELECTOR, ".processed .outcome").text.startswith("recompressed")
    decoders = [cell.text for cell in proof.find_elements(By.CSS_SELECTOR, ".verified .decoder")]
    assert decoders == [v["decoder"] for v in entry["verified_by"]] and decoders
    assert {cell.text for cell in proof.find_elements(By.CSS_SELECTOR, ".verified .match")} == {"same as the original"}
    outcomes = {row.find_elements(By.TAG_NAME, "td")[0].text: row.find_element(By.CSS_SELECTOR, ".outcome").text
                for row in proof.find_elements(By.CSS_SELECTOR, "tr.delivery")}
    assert outcomes == {"archive": "delivered", "pacs": "dead"}
    _shot(driver, "search")

    # Queues: the PACS's error is there.
    _follow(driver, driver.find_element(By.LINK_TEXT, "Queues"))
    row = driver.find_element(By.ID, "queue-pacs")
    assert row.find_element(By.CSS_SELECTOR, ".dead").text == str(len(SENT))
    assert "refused" in row.find_element(By.CSS_SELECTOR, ".error").text
    _shot(driver, "queues")

    # Dead letters: the PACS comes up, one is retried by its button and delivered.
    pacs = DicomPeer(ports["pacs_port"], ae_title="PACS").start()
    try:
        _follow(driver, driver.find_element(By.LINK_TEXT, "Dead letters"))
        letters = driver.find_elements(By.CSS_SELECTOR, "tr.dead-letter")
        assert len(letters) == len(SENT)
        assert all("refused" in letter.find_element(By.CSS_SELECTOR, ".reason").text for letter in letters)
        _shot(driver, "dead")
        chosen = letters[0].get_attribute("data-sop")
        _follow(driver, letters[0].find_element(By.CSS_SELECTOR, "button.retry"))
        assert driver.find_element(By.ID, "retried").text.startswith("1 dead letter")
        assert len(driver.find_elements(By.CSS_SELECTOR, "tr.dead-letter")) == len(SENT) - 1
        assert wait_until(lambda: chosen in pacs.by_uid(), 30)
        assert gateway.spool.count_jobs(DEAD, "pacs") == len(SENT) - 1
        assert wait_until(lambda: "delivered" in [d["outcome"] for d in record.find(chosen)[0]["deliveries"]
                                                  if d["destination"] == "pacs"], 10)
    finally:
        pacs.stop()

    # Reload: a good file adds a folder destination that receives the next instance...
    toml.write_text(_CONFIG.format(**ports) + _EXTRA)
    _follow(driver, driver.find_element(By.LINK_TEXT, "Configuration"))
    _follow(driver, driver.find_element(By.ID, "reload"))
    assert "reloaded and applied" in driver.find_element(By.ID, "reload-applied").text
    names = [row.find_elements(By.TAG_NAME, "td")[0].text
             for row in driver.find_elements(By.CSS_SELECTOR, "tr.destination")]
    assert names == ["archive", "pacs", "extra"]
    _storescu(gateway.port, [get_testdata_file("CT_small.dcm")])
    assert wait_until(lambda: any((tmp_path / "archive_extra").rglob("*.dcm")), 60)

    # ... and a bad one is refused, its error shown, the running configuration kept.
    toml.write_text(_CONFIG.format(**ports) + _EXTRA + '\n[[destinations]]\nname = "broken"\nkind = "folder"\n')
    _follow(driver, driver.find_element(By.ID, "reload"))
    error = driver.find_element(By.ID, "reload-error").text
    assert error.startswith("Reload refused") and "destinations[3].path" in error
    assert [d.name for d in gateway.config.destinations] == ["archive", "pacs", "extra"]
    assert len(driver.find_elements(By.CSS_SELECTOR, "tr.destination")) == 3
    _shot(driver, "config-refused")
