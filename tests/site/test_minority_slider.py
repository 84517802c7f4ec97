"""The minority-collapse chapter's static slider works in a real browser, without a kernel.

Opens the built page ``_build/html/chapters/03_minority_collapse.html`` in headless Chromium
(Debian's ``chromium`` and ``chromium-driver``), moves each precomputed-frame slider, and checks
that the shown frame and its label change and that the page logs no JavaScript errors.
``$MINORITY_SLIDER_PAGE`` may name another HTML file (e.g. ``jupyter nbconvert --to html`` of the
executed notebook) to test the slider without building the book.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "_build" / "html"
PAGE = Path(os.environ.get("MINORITY_SLIDER_PAGE", BUILD / "chapters" / "03_minority_collapse.html"))
CHROMEDRIVER = "/usr/bin/chromedriver"


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser():
    if "MINORITY_SLIDER_PAGE" not in os.environ and not BUILD.exists():
        pytest.skip(f"{BUILD} does not exist: build the book first (make build)")
    if not PAGE.exists():
        pytest.fail(f"{PAGE} is missing although the book was built: the minority-collapse chapter did not render")
    if not (Path(CHROMEDRIVER).exists() and (shutil.which("chromium") or Path("/usr/bin/chromium").exists())):
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    driver = _driver()
    driver.get(PAGE.resolve().as_uri())
    yield driver
    driver.quit()


def _state(driver, slider) -> tuple[str, str]:
    container = slider.find_element("xpath", "./ancestor::div[contains(@class, 'book-explorable')][1]")
    img = container.find_element("css selector", "img.book-explorable-frame")
    text = container.find_element("css selector", ".book-explorable-label")
    return img.get_attribute("src"), text.text


def test_sliders_switch_frames_and_labels(browser):
    sliders = browser.find_elements("css selector", "input[type=range].book-explorable-range")
    assert len(sliders) >= 2, "expected the LPM slider and the training-run slider on the page"
    for slider in sliders:
        browser.execute_script("arguments[0].scrollIntoView();", slider)
        lo, hi = int(slider.get_attribute("min")), int(slider.get_attribute("max"))
        assert hi > lo
        src0, label0 = _state(browser, slider)
        assert src0.startswith("data:image/png;base64,") and label0
        target = hi if int(slider.get_attribute("value")) != hi else lo
        browser.execute_script(
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
            slider, target)
        src1, label1 = _state(browser, slider)
        assert src1 != src0, "the shown frame did not change"
        assert label1 != label0, "the slider's label did not change"
    # keyboard: an arrow key moves the first slider one frame
    from selenium.webdriver.common.keys import Keys

    first = sliders[0]
    browser.execute_script("arguments[0].value = 0; arguments[0].dispatchEvent(new Event('input'));", first)
    src0, label0 = _state(browser, first)
    first.send_keys(Keys.ARROW_RIGHT)
    src1, label1 = _state(browser, first)
    assert (src1, label1) != (src0, label0) and int(first.get_attribute("value")) == 1


# Messages of the book's theme, identical on every page and unrelated to this chapter's content:
THEME_MESSAGES = (
    "'THEBE_JS_URL' has already been declared",  # sphinx-thebe writes its config script twice (Jupyter Book 1.x)
    "Got invalid theme mode",  # pydata-sphinx-theme on a first visit, before a light/dark mode is stored
)


def _is_page_error(entry: dict) -> bool:
    message = entry["message"]
    if entry["level"] != "SEVERE":
        return False
    # No network here: external resources (MathJax, require.js from a CDN) fail to load; that is the
    # sandbox, not the page.
    if "net::ERR_" in message and message.split(" ")[0].startswith(("http://", "https://")):
        return False
    return not any(known in message for known in THEME_MESSAGES)


def test_no_console_errors(browser):
    errors = [e for e in browser.get_log("browser") if _is_page_error(e)]
    assert not errors, f"browser console errors: {errors}"
