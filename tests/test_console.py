"""The operator console in a real headless Chromium (Debian's chromium and chromedriver,
driven by selenium): sign in with an API key, see a job posted over the API appear with its
progress, open its outcomes chart, see the channels and the charts of the last hour.

CI sets GATEWAY_REQUIRE_BROWSER=1 (`.ci/run` installs the browser): there a missing browser
fails the test instead of skipping it."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY, make_config, speaker_job

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOT_ENV = "GATEWAY_CONSOLE_SCREENSHOT"  # a path: save the page there (the docs' picture)


def _browser() -> Any:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("GATEWAY_REQUIRE_BROWSER"):
            pytest.fail(f"no browser: {CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium-driver)")
        pytest.skip("chromium and chromedriver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def _wait(driver: Any, condition: Any, timeout: float = 20) -> Any:
    """Until `condition(driver)` is truthy; an element redrawn under it is looked up again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(condition)


@pytest.mark.timeout(120)
async def test_the_console_shows_a_job_posted_over_the_api(start, receiver, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    running = await start(make_config(tmp_path, receiver.url))
    driver = await asyncio.to_thread(_browser)
    try:

        def sign_in() -> None:
            driver.get(f"{running.server.url}/console?refresh=200")
            _wait(driver, lambda d: d.find_element(By.ID, "login").is_displayed())  # the API needs a key
            driver.find_element(By.ID, "key").send_keys(API_KEY)
            driver.find_element(By.CSS_SELECTOR, "[data-testid=sign-in]").click()
            _wait(driver, lambda d: "no jobs yet" in d.find_element(By.ID, "jobs").text)
            state = _wait(
                driver,
                lambda d: d.find_element(By.CSS_SELECTOR, "li[data-channel=speaker]").get_attribute("data-state"),
            )
            assert state == "up"

        await asyncio.to_thread(sign_in)
        _, body, _ = await running.post(speaker_job(5, campaign="console-check"))
        job_id = body["job_id"]
        await running.wait(job_id)

        def follow_the_job() -> None:
            done = f"tr[data-job='{job_id}'][data-state=completed]"
            text = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, done).text)
            assert "console-check" in text and "5/5" in text and "sent 5" in text
            width = driver.find_element(By.CSS_SELECTOR, f"{done} .bar > span").value_of_css_property("width")
            assert width != "0px"
            _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, done).click() or True)
            parts = _wait(
                driver,
                lambda d: [
                    b.get_attribute("data-part")
                    for b in d.find_elements(By.CSS_SELECTOR, "#detail-chart rect[data-part]")
                ],
            )
            assert parts == ["speaker|sent"]
            rate = driver.find_element(By.CSS_SELECTOR, "#rate svg")
            assert rate.get_attribute("data-series") == "speaker"
            assert driver.find_elements(By.CSS_SELECTOR, "#rate polyline")
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
            assert errors == [], errors  # no script error, no CSP violation
            hostile = "<img src=x onerror=alert(1)>"
            return hostile

        hostile = await asyncio.to_thread(follow_the_job)
        _, body, _ = await running.post(speaker_job(1, campaign=hostile))
        await running.wait(body["job_id"])

        def shown_as_text() -> None:
            text = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"tr[data-job='{body['job_id']}']").text)
            assert hostile in text and not driver.find_elements(By.CSS_SELECTOR, "#jobs img")
            if os.environ.get(SCREENSHOT_ENV):
                driver.save_screenshot(os.environ[SCREENSHOT_ENV])

        await asyncio.to_thread(shown_as_text)
    finally:
        await asyncio.to_thread(driver.quit)
