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
