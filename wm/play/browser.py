"""A real browser on the play page: Debian's chromium + chromedriver driven by selenium.

Used by ``wm play --measure`` (frames/s and key-to-frame latency as the page measures them ->
data/metrics/play.json) and by the browser test. Nothing downloads: the system chromium and
chromedriver are used (``apt-get install chromium chromium-driver``; ``make test`` does it when
it runs as root), never selenium's driver manager.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from typing import Any

from wm.errors import UserError

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def find_browser() -> tuple[str, str] | None:
    """(browser, driver) paths from $WM_CHROMIUM / $WM_CHROMEDRIVER or PATH; None if absent."""
    browser = os.environ.get("WM_CHROMIUM") or next((p for b in BROWSERS if (p := shutil.which(b))), None)
    driver = os.environ.get("WM_CHROMEDRIVER") or next((p for d in DRIVERS if (p := shutil.which(d))), None)
    return (browser, driver) if browser and driver else None


def open_browser(width: int = 1100, height: int = 900):
    """A headless chromium (selenium WebDriver). The caller quits it."""
    found = find_browser()
    if found is None:
        raise UserError("no chromium + chromedriver found: `sudo apt-get install chromium chromium-driver` "
                        "(or set WM_CHROMIUM and WM_CHROMEDRIVER)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(executable_path=found[1]))


def wait_for(driver, script: str, timeout: float = 60.0, poll: float = 0.05) -> Any:
    """Poll a JS expression until it is truthy; its value, or TimeoutError."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"the page never satisfied `{script}` within {timeout:.0f} s")


def press(driver, key: str, hold_s: float = 0.0) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(driver).key_down(key)
    if hold_s:
        chain = chain.pause(hold_s)
    chain.key_up(key).perform()


def measure(url: str, seconds: float = 20.0, screenshot: str | None = None) -> dict[str, Any]:
    """Open the page, play ``seconds`` of scripted key presses (arrows held, fire tapped),
    and read back what the page measured: frames shown per second and key-to-frame latency."""
    from selenium.webdriver.common.keys import Keys

    driver = open_browser()
    try:
        driver.get(url)
        wait_for(driver, "window.wmStats && window.wmStats.frames > 5", timeout=120)
        start = driver.execute_script("return [window.wmStats.frames, performance.now(), window.wmStats.latencies.length];")
        end_at = time.monotonic() + seconds
        keys = [Keys.ARROW_LEFT, Keys.ARROW_UP, Keys.ARROW_RIGHT, Keys.ARROW_DOWN]
        i = 0
        while time.monotonic() < end_at:
            press(driver, keys[i % len(keys)], hold_s=0.3)
            press(driver, Keys.SPACE)
            time.sleep(0.2)
            i += 1
        end = driver.execute_script("return [window.wmStats.frames, performance.now(), window.wmStats.latencies];")
        header = driver.execute_script("return window.wmStats.header;")
        errors = driver.execute_script("return window.wmStats.errors;")
        if screenshot:
            driver.save_screenshot(screenshot)
    finally:
        driver.quit()
    frames = end[0] - start[0]
    elapsed = (end[1] - start[1]) / 1000.0
    lat = end[2][start[2]:]
    return {"fps": frames / elapsed, "frames": frames, "seconds": round(elapsed, 2),
            "latency_ms": statistics.median(lat) if lat else None,
            "latency_ms_p90": sorted(lat)[int(0.9 * (len(lat) - 1))] if lat else None,
            "latency_samples": len(lat), "errors": errors,
            "last_frame": {k: header.get(k) for k in ("t", "psnr", "reward", "cont")} if header else None}
