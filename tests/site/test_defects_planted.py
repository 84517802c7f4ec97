"""Each defect check fails on a planted example of its kind (and passes on a clean page).

These tests need no built book: they check the checks. The browser ones need Chromium.
"""
import base64
import io

import pytest

from tests.site.defects import browser_available, browser_defects, make_driver, static_defects

CLEAN = """<html><body><main><h1>Chapter</h1><p>The paper's claim holds: see the table.</p>
<div class="math notranslate nohighlight">\\[\\begin{aligned} D &= 1 \\end{aligned}\\]</div>
<div class="cell_output"><pre>profile: quick</pre></div></main></body></html>"""


def planted(body: str) -> str:
    return f"<html><body><main><h1>Chapter</h1>{body}</main></body></html>"


def test_clean_page_passes():
    assert static_defects(CLEAN) == []


@pytest.mark.parametrize("body, kind", [
    ('<div class="cell_output"><pre>Text(0.5, 0.98, \'Fuzziness decays\')</pre></div>', "repr"),
    ('<div class="cell_output"><pre>&lt;matplotlib.legend.Legend at 0x7f3a2c&gt;</pre></div>', "repr"),
    ("<p>where $$ D_l = \\rho^l D_0 $$ and the rest</p>", "unrendered math"),
    ("<p>with \\begin{aligned} x \\end{aligned} left as text</p>", "unrendered math"),
    ("<p>The sizes follow the issue that defines this chapter.</p>", "speaks of"),
    ("<p>These are the acceptance checks.</p>", "speaks of"),
    ('<div class="cell_output"><pre>depth   optimiser   Pearson\n4       sgd         -0.99\n8       adam        -0.98'
     '</pre></div>', "space-aligned"),
])
def test_each_static_defect_is_caught(body, kind):
    problems = static_defects(planted(body))
    assert problems and kind in problems[0]


def _png(width: int) -> str:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width / 100, 1), dpi=100)
    fig.subplots().plot([0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def driver():
    if not browser_available():
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    d = make_driver()
    yield d
    d.quit()


def test_browser_checks_catch_planted_defects(driver, tmp_path):
    page = tmp_path / "planted.html"
    page.write_text(planted(
        f'<div style="width:700px"><img alt="wide figure" style="max-width:100%" src="{_png(2000)}">'
        f'<img alt="fine figure" style="max-width:100%" src="{_png(600)}">'
        '<div class="cell_output"><pre style="overflow-x:auto">' + "x " * 10 + "y" * 400 + "</pre></div></div>"
        "<script>const A = 1;</script><script>const A = 2;</script>"))
    problems = browser_defects(driver, page.as_uri())
    text = "\n".join(problems)
    assert "wide figure" in text and "fine figure" not in text
    assert "horizontal scrolling" in text
    assert "console error" in text and "already been declared" in text


def test_browser_checks_pass_a_clean_page(driver, tmp_path):
    page = tmp_path / "clean.html"
    page.write_text(CLEAN)
    assert browser_defects(driver, page.as_uri()) == []
