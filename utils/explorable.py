"""One explorable figure per chapter: a live slider in Jupyter/Colab, precomputed frames on the website.

:func:`explorable` takes a function that draws one matplotlib figure for a value (an imbalance
ratio, an epoch, a starting scale, ...) and the values a slider runs over.

* In a live kernel (Jupyter, Colab) it shows an ``ipywidgets`` slider and one image; moving the
  slider redraws (frames are cached, so going back is instant).
* In the book build (``BOOK_BUILD=1``, set by the Makefile) or without ``ipywidgets`` it draws every
  frame once, as PNG, and shows a kernel-free HTML slider (a plain ``<input type="range">`` and a
  few lines of inline JavaScript; no CDN, no widget state), so the website page stays light.

Labels are escaped for HTML and for the inline script, so any text is safe.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
from typing import Any, Callable, Sequence

from matplotlib.figure import Figure

BUILD_ENV = "BOOK_BUILD"


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """PNG bytes of a matplotlib figure (closed afterwards when it belongs to pyplot)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    try:
        import matplotlib.pyplot as plt
        if plt.fignum_exists(getattr(fig, "number", -1)):
            plt.close(fig)
    except ImportError:  # pragma: no cover
        pass
    return buffer.getvalue()


def static_mode() -> bool:
    """True in the book build (``$BOOK_BUILD`` set to a true value) or when ipywidgets is missing."""
    if os.environ.get(BUILD_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return True
    return False


def _script_json(data: Any) -> str:
    """JSON safe inside an HTML ``<script>`` element (no ``</script>``, no ``<!--``)."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def static_slider_html(frames: Sequence[bytes], labels: Sequence[str], title: str, start: int = 0,
                       alt: str = "precomputed figure") -> str:
    """A kernel-free slider: ``<input type="range">`` switching precomputed PNG frames.

    Args:
        frames: PNG bytes, one per slider position.
        labels: the text shown beside the slider for each frame (any text; it is escaped).
        title: the slider's label.
        start: index of the frame shown first.
    Returns:
        An HTML fragment (a ``div.book-explorable``) with inline JavaScript only; element ids derive
        from a hash of the content, so builds are reproducible and several sliders share a page.
    Raises:
        ValueError: no frames, a label count that differs from the frame count, or ``start`` out of range.
    """
    if len(frames) == 0 or len(frames) != len(labels):
        raise ValueError(f"need one label per frame and at least one frame, got {len(frames)} frames "
                         f"and {len(labels)} labels")
    if not 0 <= start < len(frames):
        raise ValueError(f"start must index a frame (0..{len(frames) - 1}), got {start}")
    labels = [str(label) for label in labels]
    encoded = [base64.b64encode(f).decode("ascii") for f in frames]
    uid = "explorable-" + hashlib.sha1((title + "\x00".join(labels)).encode() + b"".join(frames)).hexdigest()[:10]
    data = _script_json({"frames": encoded, "labels": labels})
    esc = html.escape
    return f"""<div class="book-explorable" id="{uid}" style="margin:0.5em 0">
<div style="display:flex;align-items:center;gap:0.8em;flex-wrap:wrap">
<label for="{uid}-range">{esc(title)}</label>
<input type="range" class="book-explorable-range" id="{uid}-range" min="0" max="{len(frames) - 1}" step="1" value="{start}" style="width:18em" aria-label="{esc(title)}">
<output class="book-explorable-label" id="{uid}-label" for="{uid}-range">{esc(labels[start])}</output>
</div>
<img class="book-explorable-frame" id="{uid}-img" alt="{esc(alt)}" style="max-width:100%;height:auto" src="data:image/png;base64,{encoded[start]}">
<script type="application/json" id="{uid}-data">{data}</script>
<script>
(function () {{
  var data = JSON.parse(document.getElementById("{uid}-data").textContent);
  var range = document.getElementById("{uid}-range");
  var img = document.getElementById("{uid}-img");
  var label = document.getElementById("{uid}-label");
  function show() {{
    var i = parseInt(range.value, 10);
    img.src = "data:image/png;base64," + data.frames[i];
    label.textContent = data.labels[i];
  }}
  range.addEventListener("input", show);
  range.addEventListener("change", show);
}})();
</script>
</div>"""


class StaticExplorable:
    """The website form: displays as the static slider's HTML."""

    def __init__(self, html_text: str):
        self.html = html_text

    def _repr_html_(self) -> str:
        return self.html


def explorable(draw: Callable[[Any], Figure], values: Sequence[Any], labels: Sequence[str] | None = None,
               title: str = "value", start: int = 0, dpi: int = 80, alt: str = "precomputed figure",
               static: bool | None = None):
    """An explorable figure: ``draw(value)`` for each value of a slider.

    Args:
        draw: ``draw(value) -> matplotlib Figure`` for one slider position.
        values: the slider's positions (any objects ``draw`` accepts), at least one.
        labels: text for each position (default ``f"{title} = {value}"``).
        title: the slider's name, e.g. ``"imbalance ratio R"``.
        start: the position shown first.
        dpi: resolution of the frames (80 keeps a 20-frame page well under a megabyte).
        alt: the image's alternative text.
        static: force the website form (True) or the live widget (False); default :func:`static_mode`.
    Returns:
        An object that Jupyter displays: the ipywidgets box (live) or a :class:`StaticExplorable`.
    Raises:
        ValueError: no values, or labels/start that do not match them.
    """
    values = list(values)
    if not values:
        raise ValueError("explorable() needs at least one value for the slider")
    labels = [f"{title} = {v}" for v in values] if labels is None else [str(x) for x in labels]
    if len(labels) != len(values):
        raise ValueError(f"got {len(labels)} labels for {len(values)} values; pass one label per value")
    if not 0 <= start < len(values):
        raise ValueError(f"start must index a value (0..{len(values) - 1}), got {start}")
    if static_mode() if static is None else static:
        frames = [figure_png(draw(v), dpi) for v in values]
        return StaticExplorable(static_slider_html(frames, labels, title, start, alt))
    return _live(draw, values, labels, title, start, dpi)


def _live(draw, values, labels, title, start, dpi):
    import ipywidgets as widgets

    cache: dict[int, bytes] = {}

    def frame(i: int) -> bytes:
        if i not in cache:
            cache[i] = figure_png(draw(values[i]), dpi)
        return cache[i]

    image = widgets.Image(value=frame(start), format="png")
    slider = widgets.SelectionSlider(options=[(label, i) for i, label in enumerate(labels)], value=start,
                                     description=title, continuous_update=False,
                                     style={"description_width": "initial"}, layout=widgets.Layout(width="80%"))
    slider.observe(lambda change: setattr(image, "value", frame(change["new"])), names="value")
    return widgets.VBox([slider, image])
