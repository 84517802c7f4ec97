"""What a reader would see as a defect on a built page, as functions the site tests apply to every page.

Static checks read the HTML; browser checks measure the page in headless Chromium. Each returns a
list of human-readable problems (empty when the page is clean). ``tests/site/test_defects_planted.py``
plants one example of each kind to show that every check fails when it should.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from bs4 import BeautifulSoup

CHROMEDRIVER = "/usr/bin/chromedriver"
REPR_PATTERNS = (r"\bText\(", r"<matplotlib\.", r" at 0x[0-9a-f]+")
TICKET_WORDS = re.compile(r"\b(issues?|acceptance|done when)\b", re.I)
# Messages of the theme that are not the page's: only the offline sandbox's failed CDN loads.
OFFLINE = re.compile(r"^(https?://\S+) .*net::ERR_")


def _main(soup: BeautifulSoup):
    """The page's article (the theme's header buttons, e.g. "Open issue", are not prose)."""
    return soup.find("article") or soup.find("main") or soup


def _without(node, selectors: str):
    node = BeautifulSoup(str(node), "html.parser")
    for el in node.select(selectors):
        el.decompose()
    return node


def static_defects(html: str, chapter: bool = True) -> list[str]:
    """Defects visible in the page's text.

    * a Python repr leaked under a figure (``Text(...)``, ``<matplotlib...>``, `` at 0x...``);
    * display math left unrendered: ``$$`` or ``\\begin`` in the text outside math elements and code;
    * (chapters) prose that speaks of issues or acceptance checks instead of papers and claims.
    """
    soup = BeautifulSoup(html, "html.parser")
    main = _main(soup)
    problems = []
    outputs = " ".join(o.get_text(" ") for o in main.select(".cell_output, .output"))
    for pattern in REPR_PATTERNS:
        m = re.search(pattern, outputs)
        if m:
            problems.append(f"a Python repr is shown in an output: {outputs[max(m.start() - 30, 0):m.end() + 30]!r}")
    for pre in main.select(".cell_output pre, .output pre"):
        lines = [ln for ln in pre.get_text().splitlines() if ln.strip()]
        aligned = [ln for ln in lines if len(re.findall(r"\S {3,}\S", ln)) >= 2]
        if len(aligned) >= 3:
            problems.append(f"a table printed as space-aligned text (show it with utils.tables.table): "
                            f"{aligned[0][:60]!r}")
    prose = _without(main, ".math, math, pre, code, .highlight, .cell_input, script, style, mjx-container")
    text = prose.get_text(" ")
    for token in ("$$", "\\begin"):
        i = text.find(token)
        if i >= 0:
            problems.append(f"unrendered math {token!r} in the text: {text[max(i - 40, 0):i + 40]!r}")
    if chapter:
        words = _without(main, ".cell_output, .output, pre, code, .highlight, script, style, "
                               "a.reference.external, .bibliography, .citation")
        m = TICKET_WORDS.search(words.get_text(" "))
        if m:
            t = words.get_text(" ")
            problems.append(f"prose speaks of {m.group(0)!r}: {t[max(m.start() - 50, 0):m.end() + 50]!r}")
    return problems


BROWSER_MEASURE = """
const main = document.querySelector('main') || document.body;
const out = {narrow: [], scrolling: []};
for (const img of main.querySelectorAll('img')) {
  if (!img.naturalWidth || !img.offsetParent) continue;
  if (img.clientWidth < 0.6 * img.naturalWidth) {
    out.narrow.push([(img.alt || img.src).slice(0, 60), img.clientWidth, img.naturalWidth]);
  }
}
for (const el of main.querySelectorAll('.cell_output pre, .output pre, .cell_output table, .output table')) {
  if (el.scrollWidth > el.clientWidth + 4 && el.offsetParent) {
    out.scrolling.push([el.tagName, el.textContent.slice(0, 60), el.scrollWidth, el.clientWidth]);
  }
}
return out;
"""


def browser_available() -> bool:
    return Path(CHROMEDRIVER).exists() and bool(shutil.which("chromium") or Path("/usr/bin/chromium").exists())


def make_driver(width: int = 1280, height: int = 1000):
    """Headless Chromium (Debian's chromium + chromium-driver) that records the console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def browser_defects(driver, url: str) -> list[str]:
    """Load ``url`` and report console errors (other than offline CDN loads), figures shown narrower
    than 60 % of their natural width, and outputs that need horizontal scrolling."""
    driver.get(url)
    driver.execute_script("return document.readyState")
    problems = []
    for entry in driver.get_log("browser"):
        if entry["level"] == "SEVERE" and not OFFLINE.match(entry["message"]):
            problems.append(f"console error: {entry['message'][:200]}")
    measured = driver.execute_script(BROWSER_MEASURE)
    for alt, shown, natural in measured["narrow"]:
        problems.append(f"figure {alt!r} shown at {shown}px of its natural {natural}px (< 60 %): ticks unreadable")
    for tag, text, full, shown in measured["scrolling"]:
        problems.append(f"output {tag} {text!r} needs horizontal scrolling ({full}px in {shown}px)")
    return problems
