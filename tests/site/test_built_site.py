"""Checks of the website that `jupyter-book build` produced in _build/html.

Run after the build (the README's test command does): every chapter page exists, shows its
figures, and carries no traceback, execution-error report, progress-bar residue or dead widget.
"""
import re
from pathlib import Path

import pytest
import yaml
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


CHAPTERS = [f for f in toc_files() if f.startswith("chapters/")]


def page(file: str) -> BeautifulSoup:
    path = HTML / f"{file}.html"
    if not HTML.exists():
        pytest.fail(f"{HTML} does not exist: build the book first (make build)")
    assert path.exists(), f"missing page {path.relative_to(ROOT)}"
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def test_every_toc_page_exists():
    missing = [f for f in toc_files() if not (HTML / f"{f}.html").exists()]
    assert not missing, f"pages missing from the build: {missing}"
    assert len(CHAPTERS) >= 9


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_page_is_clean(chapter):
    soup = page(chapter)
    main = soup.find("main") or soup
    text = main.get_text(" ")
    images = [img for img in main.find_all("img") if "_images/" in img.get("src", "")
              or img.get("src", "").startswith("data:image")]
    assert images, f"{chapter}: no figures on the page"
    assert "Traceback (most recent call last)" not in text, f"{chapter}: a traceback is shown"
    assert not main.select(".output.traceback, .output.error"), f"{chapter}: an error output is shown"
    for pattern in (r"\d+%\|", r"\d+it/s\]", r"s/it\]"):
        assert not re.search(pattern, text), f"{chapter}: progress-bar residue matching {pattern!r}"
    dead = main.find_all("script", attrs={"type": "application/vnd.jupyter.widget-view+json"})
    assert not dead, f"{chapter}: {len(dead)} widget view(s) that render as empty boxes without a kernel"
    assert main.find("h1"), f"{chapter}: no title"


def test_bibliography_and_intro():
    intro = page("book/intro").get_text(" ")
    assert "Colab" in intro and "quick" in intro
    bib = page("book/bibliography").get_text(" ")
    assert "Papyan" in bib and "He" in bib


# --- defects a reader would see (tests/site/defects.py; each check is shown to fail on a planted page) ---
from tests.site.defects import browser_available, browser_defects, make_driver, static_defects  # noqa: E402


@pytest.mark.parametrize("file", toc_files())
def test_page_has_no_visible_defects(file):
    page(file)  # exists
    problems = static_defects((HTML / f"{file}.html").read_text(encoding="utf-8"),
                              chapter=file.startswith("chapters/"))
    assert not problems, f"{file}:\n  " + "\n  ".join(problems)


@pytest.fixture(scope="module")
def chromium():
    if not browser_available():
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    driver = make_driver()
    yield driver
    driver.quit()


@pytest.mark.parametrize("file", toc_files())
def test_page_in_a_browser(file, chromium):
    path = HTML / f"{file}.html"
    if not path.exists():
        pytest.fail(f"missing page {file}")
    problems = browser_defects(chromium, path.resolve().as_uri())
    assert not problems, f"{file}:\n  " + "\n  ".join(problems)


# --- the claims ledger on the site ---
def _experiment(chapter: str) -> str:
    return Path(chapter).name.split("_", 1)[1]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_ends_with_its_claims_table(chapter):
    from utils import claims

    main = page(chapter).find("main")
    headings = [h for h in main.find_all(["h2", "h3"]) if "What this chapter reproduces" in h.get_text()]
    assert headings, f"{chapter}: no 'What this chapter reproduces' section"
    section = headings[-1].find_parent("section") or main
    tables = section.find_all("table")
    assert tables, f"{chapter}: the claims section shows no table"
    text = tables[-1].get_text(" ")
    ids = [c.id for c in claims.chapter_claims(_experiment(chapter))]
    assert len(ids) >= 3 and all(i in text for i in ids), f"{chapter}: claims table lacks some of {ids}"


def test_ledger_page_lists_every_claim():
    from utils import claims

    ledger = page("book/reproduces")
    text = ledger.find("main").get_text(" ")
    missing = [c.id for c in claims.all_claims() if c.id not in text]
    assert not missing, f"the ledger page lacks {missing}"
    header = [th.get_text() for th in ledger.find("main").find("table").find_all("th")]
    assert {"quick", "full", "paper"} <= set(header)
