"""One way to show a table in the book: an HTML ``<table>`` that fits the page column.

Notebook outputs in Markdown are rendered as CommonMark, which has no tables, and printed
columns scroll sideways; :func:`table` returns an object Jupyter displays as HTML (and
Jupyter Book copies into the page), with every cell escaped.
"""
from __future__ import annotations

import html
import math
from typing import Any, Callable, Mapping, Sequence


def format_value(value: Any, digits: int = 3) -> str:
    """A short human-readable cell: floats with ``digits`` significant digits, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 10 ** -(digits - 1) or abs(value) >= 10 ** (digits + 2)):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(digits, len(str(int(abs(value)))))}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v, digits) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {format_value(v, digits)}" for k, v in value.items())
    return str(value)


class HTMLTable:
    """An HTML table Jupyter displays (``_repr_html_``) and prints readably (``__str__``)."""

    def __init__(self, header: Sequence[str], body: Sequence[Sequence[str]], caption: str | None = None):
        self.header, self.body, self.caption = list(header), [list(r) for r in body], caption

    def _repr_html_(self) -> str:
        cap = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.body)
        return (f'<table class="book-table table">{cap}<thead><tr>{head}</tr></thead>'
                f"<tbody>{rows}</tbody></table>")

    def __str__(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.body)) if self.body else len(h)
                  for i, h in enumerate(self.header)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([*([self.caption] if self.caption else []), line(self.header),
                          *(line(r) for r in self.body)])

    __repr__ = __str__


def table(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str] | Sequence[str] | None = None,
          caption: str | None = None, digits: int = 3,
          formats: Mapping[str, Callable[[Any], str]] | None = None) -> HTMLTable:
    """A table of ``rows`` (dicts), one column per key of ``columns``.

    Args:
        rows: records; a missing key shows as an en dash.
        columns: ``{key: header}`` or a list of keys (headers = keys); default: the first row's keys.
        caption: shown above the table.
        digits: significant digits of floats.
        formats: ``{key: function(value) -> str}`` for columns that need their own format.
    Raises:
        ValueError: when ``columns`` names no column.
    """
    if columns is None:
        columns = list(rows[0]) if rows else []
    if not isinstance(columns, Mapping):
        columns = {c: c for c in columns}
    if not columns:
        raise ValueError("table() needs at least one column: pass columns={'key': 'header', ...}")
    formats = formats or {}
    body = [[formats[k](r.get(k)) if k in formats else format_value(r.get(k), digits) for k in columns]
            for r in rows]
    return HTMLTable(list(columns.values()), body, caption)
