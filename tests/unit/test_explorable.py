"""The explorable-figure helper: static frames for the website, a live widget in a kernel, safe labels."""
import json
import re

import pytest
from bs4 import BeautifulSoup
from matplotlib.figure import Figure

from utils.explorable import explorable, static_slider_html


def draw(value):
    fig = Figure(figsize=(2, 1.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, value])
    ax.set_xlabel("x (unitless)")
    return fig


def test_static_frames_switch_by_range():
    out = explorable(draw, [1, 2, 3], title="slope", start=1, static=True)
    soup = BeautifulSoup(out._repr_html_(), "html.parser")
    rng = soup.find("input", attrs={"type": "range"})
    assert rng["max"] == "2" and rng["value"] == "1"
    data = json.loads(soup.find("script", attrs={"type": "application/json"}).string)
    assert len(data["frames"]) == 3 and data["labels"] == ["slope = 1", "slope = 2", "slope = 3"]
    assert soup.find("output").get_text() == "slope = 2"


def test_labels_cannot_break_the_page():
    evil = '</script><script>alert(1)</script> & "R"'
    html = static_slider_html([b"png"], [evil], title="<b>t</b>")
    assert html.count("</script>") == 2  # only the helper's own two script elements close
    assert "<b>t</b>" not in html
    soup = BeautifulSoup(html, "html.parser")
    assert json.loads(soup.find("script", attrs={"type": "application/json"}).string)["labels"] == [evil]


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one value"):
        explorable(draw, [], static=True)
    with pytest.raises(ValueError, match="one label per value"):
        explorable(draw, [1, 2], labels=["a"], static=True)
    with pytest.raises(ValueError, match="start must index"):
        explorable(draw, [1, 2], start=5, static=True)


def test_live_widget_caches_frames():
    pytest.importorskip("ipywidgets")
    calls = []

    def counting(v):
        calls.append(v)
        return draw(v)

    box = explorable(counting, [1, 2], static=False)
    slider, image = box.children
    slider.value = 1
    slider.value = 0
    slider.value = 1
    assert calls == [1, 2] and bytes(image.value).startswith(b"\x89PNG")


def test_build_env_selects_static(monkeypatch):
    monkeypatch.setenv("BOOK_BUILD", "1")
    assert re.search(r'class="book-explorable"', explorable(draw, [1])._repr_html_())
