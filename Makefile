# diffedu: two commands for a newcomer (see README.md)
#   make book   install everything into .venv, build the book, print where the HTML is
#   make test   install the same way, then run every test (package, notebooks, exercises, book)
# Both work from a fresh clone with nothing but the package registries (PyPI, npm).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# the CPU build of torch; a plain `torch` requirement would pull a multi-GB CUDA build
TORCH  := torch==2.13.0
PIP    := $(PY) -m pip --disable-pip-version-check
# extra flags for `jupyter-book build` (e.g. BOOK_FLAGS=--all)
BOOK_FLAGS ?=
# extra flags for pytest (e.g. PYTEST_FLAGS="-x -k exercises")
PYTEST_FLAGS ?=

.PHONY: book test install vendor student strip clean help

help:
	@echo "make book    build the book (reader mode; DIFFEDU_FAST=1 make book for CI mode)"
	@echo "make test    run all tests in CI mode (DIFFEDU_FAST=1)"
	@echo "make student write student notebooks to student/"
	@echo "make strip   strip outputs from chapters/*.ipynb before committing"

# ---------------------------------------------------------------- installation (idempotent)
$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, and only if the venv cannot import it yet
$(VENV)/.torch: | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH)
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[book,test]"
	@touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund || npm install --no-audit --no-fund
	@touch $@

# MathJax and the widget manager, copied where the book serves them from (book/_vendor)
book/_vendor/.stamp: node_modules/.package-lock.json scripts/vendor_assets.py | $(PY)
	$(PY) scripts/vendor_assets.py
	@touch $@

install: $(VENV)/.installed vendor
vendor: book/_vendor/.stamp

# ---------------------------------------------------------------- the two commands
# reader mode builds into _build/, CI mode (DIFFEDU_FAST=1) into _build/fast/_build/: each keeps
# its own jupyter-cache, so switching modes does not throw the other's outputs away
BOOK_OUT := $(if $(filter-out 0 false no,$(DIFFEDU_FAST)),_build/fast,.)

book: install
	$(PY) scripts/execute_notebooks.py --cache $(BOOK_OUT)/_build/.jupyter_cache
	$(VENV)/bin/jupyter-book build . --path-output $(BOOK_OUT) --warningiserror --keep-going $(BOOK_FLAGS)
	@echo
	@echo "The book is built: $(abspath $(BOOK_OUT))/_build/html/index.html"

# one pytest run: the package tests, and the book built in CI mode (tests/test_book.py), which
# executes every chapter notebook once, in parallel (an error or a failed quality assertion in
# any notebook fails it); pytest's exit code 5 ("no tests collected") is a failure too.
# One notebook alone: DIFFEDU_FAST=1 .venv/bin/python -m pytest --nbval-lax --nbval-current-env chapters/ch05_flow_matching.ipynb
test: install
	@rc=0; DIFFEDU_FAST=1 $(PY) -m pytest tests -p no:cacheprovider $(PYTEST_FLAGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

# ---------------------------------------------------------------- classroom and housekeeping
student: install
	$(PY) -m diffedu.exercises student chapters/ -o student/

strip: | $(PY)
	$(PY) scripts/strip_notebooks.py chapters/

clean:
	rm -rf _build book/_vendor student artifacts
