"""A Sphinx extension: each page loads every script once.

sphinx-thebe adds its inline configuration script (``const THEBE_JS_URL = ...``) each time its
``env-before-read-docs`` handler runs; a second copy makes every page log
``Uncaught SyntaxError: Identifier 'THEBE_JS_URL' has already been declared``.  This keeps the
first of any scripts that are equal (same file, same attributes and inline body).
"""
from __future__ import annotations


def _unique_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        key = (str(getattr(js, "filename", js) or ""), tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique


def setup(app):
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
