"""The kiosk page (``shelfrank serve --ui``) in a real headless Chromium against a real service.

Debian's ``chromium`` and ``chromium-driver`` (``scripts/setup.sh --system`` installs them) driven
by selenium (the ``dev`` extra) through ``/usr/bin/chromedriver`` named explicitly, so Selenium
Manager never runs (it would download a browser and a driver, and CI is offline). The test types
into the search box, clicks a result and checks that the page changed: results as you type, the
"recommended for you" row updated by the click (recorded as an event), "similar items" shown.
A screenshot is saved in the test's tmp folder (``SHELFRANK_KIOSK_SCREENSHOT`` = a path: a copy
there too, how docs/kiosk.png is made).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from shelfrank.device.service.endpoints import Service
from shelfrank.device.service.routes import UI_PAGE
from shelfrank.device.service.serve import start

from .conftest import Client

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 20.0
K = 6  # the page's row length (kiosk.html: const K)


def _driver(tmp_path: Path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} missing: run scripts/setup.sh --system "
            "(it installs Debian's chromium and chromium-driver)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service as DriverService
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[dev]' (the dev extra pins it)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root (CI containers) Chromium refuses to start sandboxed
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        opts.add_argument(arg)
    # the driver named: Selenium Manager (which downloads one) never runs
    return webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=opts)


@pytest.fixture()
def kiosk(rec):
    servers = start(Service(rec), host="127.0.0.1", port=0, ui=True)
    yield rec, servers
    servers.close()


def test_the_page_is_one_file_with_nothing_from_elsewhere():
    page = UI_PAGE.read_text()
    assert "<script src" not in page and 'rel="stylesheet"' not in page  # inline JS and CSS only
    assert all(url.startswith("data:") for url in re.findall(r'(?:src|href)="([^"]*)"', page))
    for scheme in ("http://", "https://", "//cdn"):
        assert scheme not in page, scheme


def test_ui_served_only_with_the_flag(served, kiosk):
    _, plain = served
    c = Client(tcp=plain.tcp_address)
    status, doc, _ = c.call("GET", "/ui/")
    c.close()
    assert status == 404 and doc["error"] == "not_found"
    c = Client(tcp=kiosk[1].tcp_address)
    c.conn.request("GET", "/ui/")
    r = c.conn.getresponse()
    body = r.read()
    assert r.status == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == UI_PAGE.read_bytes()
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "'sha256-" in csp
    c.conn.request("GET", "/ui")
    r = c.conn.getresponse()
    r.read()
    assert r.status == 308 and r.headers["Location"] == "/ui/"
    c.close()


def test_kiosk_in_headless_chromium(kiosk, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rec, servers = kiosk
    host, port = servers.tcp_address
    driver = _driver(tmp_path)
    try:
        driver.get(f"http://{host}:{port}/ui/")
        wait = WebDriverWait(driver, WAIT_S)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        user = driver.find_element(By.ID, "user").get_attribute("value")
        assert user.startswith("kiosk-")
        recs = driver.find_element(By.ID, "recs")
        before = recs.get_attribute("data-ids").split()
        assert len(before) == K  # a shopper without history: popular items
        assert before == [it.item_id for it in rec.recommend(user, K)]

        # results as you type: a prefix first, then the word
        expected = [it.item_id for it in rec.search("espresso", K)]
        box = driver.find_element(By.ID, "q")
        box.send_keys("espre")
        box.send_keys("sso")
        results = driver.find_element(By.ID, "results")
        wait.until(lambda d: (results.get_attribute("data-ids") or "").split() == expected)  # "espre" may show first
        titles = [e.text for e in results.find_elements(By.CSS_SELECTOR, ".card .title")]
        assert len(titles) == K and "Espresso" in titles[0], titles

        # a click: recorded as an event, the recommendations follow it, similar items shown
        first = results.find_element(By.CSS_SELECTOR, ".card")
        clicked = first.get_attribute("data-item-id")
        first.click()
        body = driver.find_element(By.TAG_NAME, "body")
        wait.until(lambda d: body.get_attribute("data-clicked") == clicked)
        after = recs.get_attribute("data-ids").split()
        assert after != before and clicked not in after
        assert after == [it.item_id for it in rec.recommend(user, K)]
        assert [(e.item_id, e.action) for e in rec.history(user)] == [(clicked, "click")]
        similar = driver.find_element(By.ID, "similar")
        assert similar.is_displayed()
        assert similar.get_attribute("data-ids").split() == [it.item_id for it in rec.similar(clicked, K)]
        assert driver.find_element(By.ID, "similar-title").text.startswith("Similar to ")
        assert driver.find_element(By.ID, "error").text == ""

        # the rows were recorded as impressions, and the click joined with the search row's
        wait.until(lambda d: "similar" in rec.events.click_through())
        ct = rec.events.click_through()
        assert ct["search"][0] in (K, 2 * K) and ct["search"][1] == 1, ct  # 2K: "espre" got an answer too
        assert ct["recommended"][0] >= 2 * K and ct["recommended"][1] == 0, ct

        shot = tmp_path / "kiosk.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"\nkiosk screenshot: {shot}")
        if os.environ.get("SHELFRANK_KIOSK_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["SHELFRANK_KIOSK_SCREENSHOT"])
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not logs, logs  # no script error, no CSP refusal, no failed fetch
    finally:
        driver.quit()


def test_serve_ui_flag_in_a_real_process(bundle_and_key, tmp_path):
    from .test_cli import _serve, _stop

    proc, line = _serve(bundle_and_key, tmp_path, "--port", "0", "--ui")
    try:
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1))
        c = Client(tcp=("127.0.0.1", port))
        c.conn.request("GET", "/ui/")
        r = c.conn.getresponse()
        assert r.status == 200 and r.read() == UI_PAGE.read_bytes()
        c.close()
    finally:
        code, err = _stop(proc)
    assert code == 0 and "Traceback" not in err, err


def test_without_chromium_the_test_fails_naming_the_setup_step(monkeypatch, tmp_path):
    monkeypatch.setitem(globals(), "CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(pytest.fail.Exception, match=r"scripts/setup\.sh --system"):
        _driver(tmp_path)
