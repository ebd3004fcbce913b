"""Build the book (CI mode) and check the rendered pages in headless Chromium, offline.

Marked slow, but it runs in CI (`make test`). Without Chromium the browser test is skipped
locally and FAILS when the environment variable CI is set. Screenshots go to artifacts/.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import ROOT, in_ci

pytestmark = pytest.mark.slow

JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
ARTIFACTS = ROOT / "artifacts"
BUILD_TIMEOUT = 1800


def _vendored() -> None:
    if not (ROOT / "book" / "_vendor" / "mathjax" / "tex-mml-chtml.js").exists():
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "vendor_assets.py")], capture_output=True, text=True)
        assert proc.returncode == 0, f"book/_vendor is missing and could not be made (run `make vendor`): {proc.stderr}"


def _build(source: Path, out: Path, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DIFFEDU_FAST="1", **(env_extra or {}))
    return subprocess.run(
        [str(JUPYTER_BOOK), "build", str(source), "--path-output", str(out), "--warningiserror", "--keep-going"],
        capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT, cwd=source,
    )


def _execute(out: Path) -> subprocess.CompletedProcess:
    """Execute every chapter in parallel into the build's cache (scripts/execute_notebooks.py), as `make book` does."""
    env = dict(os.environ, DIFFEDU_FAST="1")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "execute_notebooks.py"), "--cache",
                           str(out / "_build" / ".jupyter_cache")], capture_output=True, text=True, env=env,
                          timeout=BUILD_TIMEOUT, cwd=ROOT)


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    _vendored()
    out = tmp_path_factory.mktemp("book")
    ex = _execute(out)
    print(ex.stdout)
    assert ex.returncode == 0, f"a notebook failed (CI mode):\n{ex.stdout[-3000:]}\n{ex.stderr[-8000:]}"
    proc = _build(ROOT, out)
    log = proc.stdout[-6000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, f"the book build failed:\n{log}"
    html = out / "_build" / "html"
    assert (html / "index.html").exists()
    return html


def test_an_unchanged_rebuild_executes_nothing(built_book):
    import time

    start = time.perf_counter()
    ex = _execute(built_book.parents[1])
    assert ex.returncode == 0 and "executing 0 with" in ex.stdout, ex.stdout
    assert time.perf_counter() - start < 60


def _toc_pages() -> list[str]:
    import execute_notebooks

    return execute_notebooks.toc_pages()


def test_every_toc_page_is_built(built_book):
    for page in _toc_pages():
        stem = page.removesuffix(".ipynb").removesuffix(".md")
        assert (built_book / f"{stem}.html").exists(), f"{stem}.html was not built"
    assert (built_book / "_static" / "mathjax" / "tex-mml-chtml.js").exists()
    assert (built_book / "_static" / "widgets" / "embed-amd.js").exists()


def _chromium_or_skip():
    import check_book

    chromium = check_book.find_chromium()
    if chromium is None:
        if in_ci():
            pytest.fail("Chromium is not installed (CI must install it: apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium); the test runs in CI")
    return chromium


def test_pages_render_offline_in_a_browser(built_book):
    import check_book

    chromium = _chromium_or_skip()
    chapters = sorted(p.relative_to(built_book).as_posix() for p in (built_book / "chapters").glob("*.html"))
    assert chapters, "no chapter pages were built"
    pages = ["book/intro.html", "book/notation.html", *chapters]
    reports = check_book.check_pages(built_book, pages, screenshot_dir=ARTIFACTS / "screenshots", chromium=chromium)
    problems = []
    for rep in reports:
        is_chapter = rep.page.startswith("chapters/")
        problems += check_book.problems(rep, expect_math=True, expect_figures=is_chapter)
    # chapter 1 is the exemplar: it must show widgets drawn by the HTML manager and an animation
    ch01 = next(r for r in reports if r.page.endswith("ch01_generative_modelling.html"))
    problems += check_book.problems(ch01, expect_math=True, expect_figures=True, expect_widgets=True,
                                    expect_animation=True)
    assert not problems, "\n".join(problems)
    for rep in reports:
        assert rep.screenshot is not None and rep.screenshot.stat().st_size > 10_000


def test_the_browser_check_fails_a_slider_that_is_not_linked(built_book):
    # the same ch01 page with the jslink models removed from its embedded widget state: the slider still moves,
    # the figure does not, and the check must say so (the untampered page passes in the test above)
    import json
    import re

    import check_book

    chromium = _chromium_or_skip()
    page = built_book / "chapters" / "ch01_generative_modelling.html"
    html = page.read_text()
    m = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', html, re.S)
    assert m, "ch01 embeds its widget state"
    state = json.loads(m.group(1))
    links = [k for k, v in state["state"].items() if v.get("model_name") == "LinkModel"]
    assert links, "ch01's slider is linked in the browser"
    for k in links:
        del state["state"][k]
    tampered = page.with_name("ch01_unlinked.html")
    tampered.write_text(html[:m.start(1)] + json.dumps(state) + html[m.end(1):])
    try:
        (rep,) = check_book.check_pages(built_book, ["chapters/ch01_unlinked.html"], chromium=chromium)
    finally:
        tampered.unlink()
    found = check_book.problems(rep, expect_math=True, expect_figures=True, expect_widgets=True)
    assert any("moving the slider did not change the figure" in p for p in found), found


# ----------------------------------------------------------------------------- the build is strict
def _tiny_book(tmp_path: Path, code: str) -> Path:
    """A one-notebook book with the real configuration (paths made absolute)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["only_build_toc_files"] = True
    config.pop("bibtex_bibfiles", None)  # no bibliography in the tiny book, so no bibtex options
    config["sphinx"]["config"] = {k: v for k, v in config["sphinx"]["config"].items() if not k.startswith("bibtex")}
    config["html"].pop("favicon", None)
    sphinx = config["sphinx"]
    sphinx["local_extensions"] = {name: str(ROOT / path) for name, path in sphinx["local_extensions"].items()}
    sphinx["config"]["html_static_path"] = [str(ROOT / p) for p in sphinx["config"]["html_static_path"]]
    src = tmp_path / "src"
    src.mkdir()
    (src / "_config.yml").write_text(yaml.safe_dump(config))
    (src / "_toc.yml").write_text("format: jb-book\nroot: page\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# A page"), nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, src / "page.ipynb")
    return src


def test_the_browser_check_catches_raw_tex_and_long_code_is_wrapped(tmp_path):
    """The page check fails on prose left as TeX; a code line longer than the column wraps, never scrolls."""
    import check_book

    chromium = _chromium_or_skip()
    _vendored()
    src = _tiny_book(tmp_path, "y = 1")
    nb = nbformat.read(src / "page.ipynb", as_version=4)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("Stray TeX outside math: \\mathcal N(0, I) and g_{t}.\n\n"
                                                     "Fine math: $\\alpha_t x_0$."))
    nb.cells.append(nbformat.v4.new_code_cell("z = 1  # " + "a very long comment " * 12))
    nbformat.write(nb, src / "page.ipynb")
    proc = _build(src, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = tmp_path / "out" / "_build" / "html"
    report = check_book.check_pages(html, ["page.html"], chromium=chromium)[0]
    found = check_book.problems(report, expect_math=True, expect_figures=False)
    assert any("raw TeX" in f and "mathcal" in f for f in found), found
    assert report.probe["wide_code"] == [], "the book's CSS wraps long code lines"
    assert report.probe["mjx_containers"] >= 1


@pytest.mark.parametrize("code, why", [
    ("print('fine')", None),
    ("raise RuntimeError('deliberate failure')", "an error"),
    ("import warnings\nwarnings.warn('deliberate warning')", "a warning"),
    ("import sys\nprint('to stderr', file=sys.stderr)", "stderr output"),
], ids=["clean", "error", "warning", "stderr"])
def test_any_notebook_error_or_warning_fails_the_build(tmp_path, code, why):
    _vendored()
    src = _tiny_book(tmp_path, code)
    proc = _build(src, tmp_path / "out")
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    if why is None:
        assert proc.returncode == 0, f"a clean notebook must build:\n{log}"
    else:
        assert proc.returncode != 0, f"a notebook with {why} must fail the build:\n{log}"
