"""
The screenshots of docs/ui.md and the README, taken from a running demo
(``python -m tests.uidemo --agent``) in headless Chromium::

    .venv/bin/python -m tests.uishots --url http://127.0.0.1:8931 --out docs
"""

from __future__ import annotations

import argparse
import shutil
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8931")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--session", default="sess_demo_agent")
    options = parser.parse_args()
    chrome = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1360,1040",
                     "--hide-scrollbars", "--force-device-scale-factor=1"):
        chrome.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=chrome)
    wait = WebDriverWait(driver, 60, poll_frequency=0.05)
    try:
        driver.get(options.url + "/ui/")
        wait.until(lambda d: d.execute_script("return document.querySelectorAll('#chart-latency circle').length > 0"))
        time.sleep(0.5)  # let the last rows settle
        driver.save_screenshot(f"{options.out}/ui-sessions.png")
        driver.get(f"{options.url}/ui/sessions/{options.session}")
        wait.until(lambda d: d.execute_script(
            "const s = document.querySelector('.call.in-progress .stream');"
            "return s !== null && s.textContent.length > 150"))
        driver.save_screenshot(f"{options.out}/ui-session.png")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
