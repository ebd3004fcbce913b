"""Notebook hygiene: committed without outputs, the standard set-up cell, listed in the toc.

Executing the notebooks is the book build's job (tests/test_book.py runs
scripts/execute_notebooks.py, every notebook of the toc once, in parallel, then builds); the
exercise cells are tested in tests/exercises/ and the rendered book in test_book.py.
"""
from __future__ import annotations

import re

import nbformat
import pytest
import yaml

from conftest import ROOT, chapter_notebooks, repo_notebooks

NOTEBOOKS = repo_notebooks()
CHAPTERS = chapter_notebooks()


def _config():
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def _toc_files(toc) -> list[str]:
    import execute_notebooks

    return execute_notebooks.toc_pages(ROOT / "_toc.yml")


def test_the_build_executes_exactly_the_chapters():
    import execute_notebooks

    executed = {p.resolve() for p in execute_notebooks.toc_notebooks()}
    assert executed == {p.resolve() for p in CHAPTERS}, "every notebook in chapters/ must be in _toc.yml and executed"
    assert len(CHAPTERS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; run `make strip`"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state; run `make strip`"
    # nbformat 4.5 cells carry unique ids (a missing one is a MissingIDFieldWarning now, an error in future nbformat)
    import json
    ids = [c.get("id") for c in json.loads(path.read_text())["cells"]]
    assert None not in ids and len(set(ids)) == len(ids), f"{path.name}: cells without a unique id; run nbformat.validator.normalize"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_first_code_cell_is_the_setup_cell(path):
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code").source
    url = _config()["repository"]["url"]
    assert re.search(r"if\s+[\"']google\.colab[\"']\s+in\s+sys\.modules\s*:", first), \
        f"{path.name}: the first code cell must install diffedu only on Colab"
    assert f"git+{url}" in first, f"{path.name}: the Colab install must use repository.url ({url}) from _config.yml"
    assert "pick_device()" in first, f"{path.name}: the first code cell must pick the device"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_toc_lists_existing_pages_and_every_chapter():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = _toc_files(toc)
    missing = [f for f in files if not any((ROOT / (f + ext)).exists() for ext in ("", ".md", ".ipynb"))]
    assert not missing, f"_toc.yml lists pages that do not exist: {missing}"
    for part in toc.get("parts", []):
        assert part.get("chapters"), f"empty part in _toc.yml: {part.get('caption')}"
    listed = {f.removesuffix(".ipynb") for f in files}
    orphans = [p.name for p in CHAPTERS if f"chapters/{p.stem}" not in listed]
    assert not orphans, f"chapters not in _toc.yml (add one line each): {orphans}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_exercise_cells_follow_the_convention(path):
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    for i, cell in enumerate(cells):
        tags = cell.metadata.get("tags", [])
        assert isinstance(tags, list) and all(isinstance(t, str) for t in tags), \
            f"{path.name} cell {i}: tags must be a flat list of strings, got {tags!r}"
        if "solution" in tags:
            assert cell.cell_type == "code"
            assert "# BEGIN SOLUTION" in cell.source and "# END SOLUTION" in cell.source, \
                f"{path.name} cell {i}: a solution cell needs '# BEGIN SOLUTION' / '# END SOLUTION'"
            assert "hide-input" in tags, f"{path.name} cell {i}: tag the solution cell 'hide-input' too"
            nxt = next((c for c in cells[i + 1:] if c.cell_type == "code"), None)
            assert nxt is not None and "check" in nxt.metadata.get("tags", []), \
                f"{path.name} cell {i}: the code cell after a solution must be tagged 'check'"


def _numbered_chapters(toc) -> list[str]:
    """The chapter files of the toc's numbered parts, in the order the book numbers them."""
    return [c["file"] for part in toc.get("parts", []) if part.get("numbered") for c in part.get("chapters", [])]


def test_the_book_numbers_chapters_as_the_monograph_does():
    # Sphinx numbers the chapters of numbered parts consecutively across parts (use_multitoc_numbering),
    # so chapter k of the book is the k-th numbered file: it must be the monograph's chapter k.
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert _config()["html"].get("use_multitoc_numbering") is True
    files = _numbered_chapters(toc)
    assert files, "no numbered chapters in _toc.yml"
    for k, f in enumerate(files, start=1):
        m = re.match(r"chapters/ch(\d\d)_", f)
        assert m and int(m.group(1)) == k, (
            f"_toc.yml: the book would number {f} as chapter {k}; only chapters chNN_* whose NN follows on "
            "from the chapter before may be in a numbered part (move the others to an unnumbered part)")
    for part in toc.get("parts", []):
        if not part.get("numbered"):
            assert not any(re.match(r"chapters/ch\d\d_", c["file"]) for c in part.get("chapters", [])
                           if c["file"] not in files), f"numbered chapter in an unnumbered part: {part.get('caption')}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_headings_carry_no_number_of_their_own(path):
    # the book numbers the headings itself ("9.3. Error against NFE"); a hand-written "9.3" would show twice
    nb = nbformat.read(path, as_version=4)
    numbered = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if re.match(r"^#{1,6}\s+(\d+(\.\d+)*\.?|[A-Z]\.\d+(\.\d+)*)\s", line)]
    assert not numbered, f"{path.name}: headings with a hand-written number: {numbered}"


_BIB_KEYS = set(re.findall(r"^@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text(), flags=re.M))
_CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
# a paper named in prose: "Ho et al.", "Song & Ermon", "Nichol & Dhariwal's", "Salimans–Ho"
_NAMED = re.compile(r"\b[A-Z][a-zà-ü]+(?: et al\.|\s*(?:&|–)\s*[A-Z][a-zà-ü]+\b)")
# "&" and "–" between capitalised words that are not authors
_NOT_AUTHORS = {"Euler–Maruyama", "Fokker–Planck", "Runge–Kutta", "Adams–Bashforth", "Gauss–Newton",
                "Ornstein–Uhlenbeck", "Kullback–Leibler", "Cauchy–Schwarz", "Euler–Lagrange", "Hamilton–Jacobi",
                "Monge–Ampère", "Benamou–Brenier", "Kantorovich–Rubinstein", "Brenier–McCann"}


def _prose_paragraphs(path):
    if path.suffix == ".md":
        sources = [re.sub(r"```.*?```", " ", path.read_text(), flags=re.S)]
    else:
        sources = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]
    for source in sources:
        source = re.sub(r"``.*?``", " ", source, flags=re.S)  # literal code, e.g. an example of the cite role
        text = re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$|`[^`]*`", lambda m: m.group(0) if m.group(0).startswith("`") else " ",
                      source, flags=re.S)
        yield from re.split(r"\n\s*\n|\n(?=\|)", text)  # paragraphs; a table row counts as one


@pytest.mark.parametrize("path", NOTEBOOKS + sorted((ROOT / "book").glob("*.md")), ids=lambda p: p.name)
def test_every_paper_named_is_cited(path):
    # the standards: every paper named is cited from references.bib, in the paragraph that names it
    uncited, unknown = [], []
    for para in _prose_paragraphs(path):
        keys = {k.strip() for group in _CITE.findall(para) for k in group.split(",")}
        unknown += sorted(keys - _BIB_KEYS)
        prose = _CITE.sub(" ", para)
        names = [m.group(0) for m in _NAMED.finditer(prose) if m.group(0).replace(" ", "") not in _NOT_AUTHORS]
        if names and not keys:
            uncited.append(names[0])
    assert not unknown, f"{path.name}: cite keys missing from book/references.bib: {unknown}"
    assert not uncited, f"{path.name}: papers named without a {{cite}} in the same paragraph: {uncited}"


def test_the_citation_check_sees_an_uncited_name(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("As Ho et al. showed, $x$ ...")])
    nbformat.write(nb, tmp_path / "probe.ipynb")
    with pytest.raises(AssertionError, match="Ho et al"):
        test_every_paper_named_is_cited(tmp_path / "probe.ipynb")
