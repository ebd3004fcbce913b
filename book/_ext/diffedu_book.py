"""A small Sphinx extension for the diffedu book (loaded through `sphinx: local_extensions`).

* Drops duplicate <script> tags: sphinx-thebe registers its inline configuration once per
  read, and a second copy on the page is a script error ("THEBE_JS_URL has already been
  declared") that the offline browser test would rightly flag.
"""
from __future__ import annotations


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        attrs = getattr(script, "attributes", {}) or {}
        key = (getattr(script, "filename", None) or "", tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(script)
    scripts[:] = unique  # in place: the builder restores its own list before every page


def setup(app):
    # early: html-page-context is emitted with emit_firstresult, so a late handler may not run
    app.connect("html-page-context", _dedupe_scripts, priority=100)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
