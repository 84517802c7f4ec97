"""The chapters as files: no stored outputs, the Colab cell in sync, a profile parameter."""
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from utils.colab import SETUP_TAG, repository_url, setup_cell_source

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))


def test_every_toc_chapter_is_a_notebook():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"] if c["file"].startswith("chapters/")]
    assert files, "no chapters in _toc.yml"
    missing = [f for f in files if not (ROOT / f"{f}.ipynb").exists()]
    assert not missing, f"chapters listed in _toc.yml without a notebook: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_clean_and_colab_ready(path):
    nb = nbformat.read(path, as_version=4)
    with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not with_outputs, f"{path.name}: cells {with_outputs} carry outputs; run `python -m utils.colab`"
    first = nb.cells[0]
    assert SETUP_TAG in first.metadata.get("tags", []), f"{path.name}: first cell is not the Colab set-up"
    assert first.source == setup_cell_source(), f"{path.name}: Colab cell out of date; run `python -m utils.colab`"
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "PROFILE = None" in sources and "get_profile(PROFILE)" in sources, f"{path.name}: no profile parameter"
    titles = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
              if line.startswith("# ")]
    assert len(titles) == 1, f"{path.name}: expected one level-1 title, found {titles}"


def test_repository_address_lives_in_config():
    url = repository_url()
    assert url.startswith("https://github.com/")
    assert url in setup_cell_source()


TICKET_WORDS = re.compile(r"\b(issues?|acceptance|done when)\b", re.I)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_house_style(path):
    """A parameters cell, the claims table at the end, display math on its own lines, no ticket words."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "PROFILE = None" in c.source]
    assert params and "parameters" in params[0].metadata.get("tags", []), f"{path.name}: PROFILE cell not tagged parameters"
    assert "claims.report(" in code[-1].source, f"{path.name}: the last code cell must show the claims table"
    assert not any("__import__(" in c.source for c in code), f"{path.name}: use an import statement"
    for c in nb.cells:
        if c.cell_type != "markdown":
            continue
        for line in c.source.splitlines():
            if "$$" in line:
                assert line.strip() == "$$", f"{path.name}: put $$ on its own line: {line.strip()[:80]!r}"
        m = TICKET_WORDS.search(c.source)
        assert not m, f"{path.name}: the book speaks of papers and claims, not {m.group(0)!r}: {c.source[:80]!r}"
