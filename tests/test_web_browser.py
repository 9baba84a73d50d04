"""The dashboard in a real headless browser (Debian's chromium + chromedriver, via Selenium):
pages load with no console errors, filtering and paging on 10,000 jobs, kill and retry from the
buttons change the database. Screenshots go to ``test-artifacts/screenshots/``."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.web_support import TOKEN, insert_jobs, web_server

SHOTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "test-artifacts", "screenshots")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    from selenium.webdriver.support.ui import WebDriverWait as _Wait

    def WebDriverWait(driver: Any, timeout: float) -> Any:  # noqa: N802 - selenium's name
        """Selenium's wait, also retrying while the page is being replaced (an element found
        on the old page goes stale before its text is read)."""
        return _Wait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))
except ImportError:  # pragma: no cover - tests/run.sh installs it with the test extra
    webdriver = None  # type: ignore[assignment]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    webdriver is None or not CHROMIUM or not DRIVER,
    reason="needs selenium and Debian's chromium + chromium-driver "
           "(tests/run.sh installs them as root: apt-get install chromium chromium-driver)")]


@pytest.fixture
def browser() -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=DRIVER)
    drv = webdriver.Chrome(options=opts, service=service)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


def shot(drv: Any, name: str) -> None:
    os.makedirs(SHOTS, exist_ok=True)
    drv.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def console_errors(drv: Any) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def state_of(cursor: Any, job_id: Any) -> str:
    cursor.execute("SELECT state FROM core_balsamjob WHERE job_id = %s", [str(job_id)])
    return str(cursor.fetchone()[0])


def test_pages_load_without_console_errors_and_charts_draw(db: str, cursor, browser) -> None:
    from balsam.core import lifecycle

    rows = insert_jobs(cursor, [{"name": f"j{i}", "workflow": f"w{i % 3}",
                                 "state": "PREPROCESSED"} for i in range(30)])
    lifecycle.transition(cursor, [r["job_id"] for r in rows[:20]], "RUNNING")
    lifecycle.transition(cursor, [r["job_id"] for r in rows[:12]], "RUN_DONE")
    cursor.execute("INSERT INTO core_applicationdefinition (name, description, executable, "
                   "preprocess, envscript, postprocess) VALUES ('sim', 'x', '/bin/true', '', '', '')")
    with web_server(db, "--token", TOKEN) as base:
        browser.get(base + "/")
        assert "needs the login token" in browser.page_source  # 403 page with the form
        shot(browser, "login")
        # The only console entry so far: the refused (403) first visit itself.
        assert [m.split(" - ")[-1] for m in console_errors(browser)] == [
            "Failed to load resource: the server responded with a status of 403 (Forbidden)"]
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "login").click()
        WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "state-counts"))
        WebDriverWait(browser, 20).until(
            lambda d: d.find_element(By.ID, "throughput").get_attribute("data-drawn"))
        assert browser.find_element(By.ID, "throughput").get_attribute("data-drawn") != "0"
        running = browser.find_element(By.CSS_SELECTOR, "#state-counts tr:nth-child(6)").text
        assert running.split() == ["RUNNING", "8"]
        shot(browser, "overview")
        for path, name in (("/jobs/", "jobs"), (f"/jobs/{rows[0]['job_id']}/", "job"),
                           ("/apps/", "apps"), ("/workflows/", "workflows")):
            browser.get(base + path)
            assert browser.title.endswith("· Balsam"), path
            shot(browser, name)
        assert console_errors(browser) == []


def test_filter_and_page_through_10000_jobs_in_the_browser(db: str, cursor, browser) -> None:
    rows = insert_jobs(cursor, [{"name": f"task{i:05d}", "workflow": f"wf{i % 4}",
                                 "state": ("JOB_FINISHED", "FAILED")[i % 2]}
                                for i in range(10_000)])
    with web_server(db, "--token", TOKEN) as base:
        browser.get(f"{base}/jobs/?token={TOKEN}")
        assert browser.find_element(By.ID, "job-count").text == "10000 matching"
        Select(browser.find_element(By.ID, "f-state")).select_by_visible_text("FAILED")
        browser.find_element(By.ID, "f-wf").send_keys("wf3")
        Select(browser.find_element(By.ID, "f-size")).select_by_visible_text("100")
        browser.find_element(By.ID, "apply").click()
        WebDriverWait(browser, 20).until(
            lambda d: d.find_element(By.ID, "job-count").text == "2500 matching")
        expected = [str(r["job_id"])[:8] for i, r in enumerate(rows) if i % 4 == 3][::-1]

        def ids() -> list[str]:
            return [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#jobs-table tbody a")]

        assert ids() == expected[:100]
        browser.find_element(By.ID, "next").click()
        WebDriverWait(browser, 20).until(lambda d: ids() == expected[100:200])
        browser.find_element(By.ID, "next").click()
        WebDriverWait(browser, 20).until(lambda d: ids() == expected[200:300])
        browser.find_element(By.ID, "prev").click()
        WebDriverWait(browser, 20).until(lambda d: ids() == expected[100:200])
        shot(browser, "jobs-filtered")
        browser.find_element(By.LINK_TEXT, "Name").click()  # sort by name, descending first
        WebDriverWait(browser, 20).until(lambda d: ids()[:1] == [expected[0]])
        browser.find_element(By.LINK_TEXT, "Name").click()  # then ascending
        WebDriverWait(browser, 20).until(lambda d: ids()[:1] == [expected[-1]])
        assert console_errors(browser) == []


def test_kill_and_retry_buttons_change_the_database(db: str, cursor, browser) -> None:
    from balsam.core import lifecycle

    live, dead = insert_jobs(cursor, [{"name": "live", "state": "READY"},
                                      {"name": "dead", "state": "READY"}])
    lifecycle.transition(cursor, [dead["job_id"]], "FAILED", "stage-in failed")
    with web_server(db, "--token", TOKEN) as base:
        browser.get(f"{base}/jobs/{live['job_id']}/?token={TOKEN}")
        browser.find_element(By.ID, "kill").click()
        browser.switch_to.alert.accept()  # the confirmation
        WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "flash"))
        assert browser.find_element(By.ID, "flash").text == "Killed 1 job(s)."
        assert browser.find_element(By.ID, "job-state").text == "USER_KILLED"
        assert state_of(cursor, live["job_id"]) == "USER_KILLED"
        shot(browser, "job-killed")
        browser.get(f"{base}/jobs/{dead['job_id']}/")
        browser.find_element(By.ID, "retry").click()
        WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "flash"))
        assert state_of(cursor, dead["job_id"]) == "CREATED"
        assert browser.find_element(By.ID, "job-state").text == "CREATED"
        assert not browser.find_elements(By.ID, "retry")
        shot(browser, "job-retried")
        assert console_errors(browser) == []
