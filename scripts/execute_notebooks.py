"""Execute the book's notebooks in parallel into the build's jupyter-cache, so the build only renders.

Jupyter Book (``execute_notebooks: cache`` in ``_config.yml``) looks each notebook up in the
jupyter-cache of its build folder and executes only those whose code changed since their last
successful run -- one after another. This script fills that cache first, running the changed
notebooks side by side (one process each, up to ``--jobs``, longest first) with one thread per
kernel, so a build uses every core and an unchanged re-build executes nothing.

    python scripts/execute_notebooks.py --cache _build/.jupyter_cache [--jobs N] [NOTEBOOK ...]

Without NOTEBOOK arguments it takes every notebook listed in ``_toc.yml``. The kernels inherit
this process's environment (``DIFFEDU_FAST=1`` selects CI mode). jupyter-cache keys a notebook by
its code alone, so the cache also records a fingerprint of the package's source and of the mode:
when either changed, the whole cache is cleared first (a change in ``diffedu/`` re-executes every
chapter). Exits 1, printing the traceback of each notebook that failed, if any did; the build
would fail on it anyway.

Shared artefacts are made once, before the parallel run: when more than one stale notebook calls
``metrics.feature_network("NAME")`` and its cache file is missing, the feature network is trained
here first (one process), so the notebooks load it instead of each training its own copy.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_pages(toc: Path = ROOT / "_toc.yml") -> list[str]:
    """Every page (``file:`` and ``root:`` entries) of the table of contents, as written there."""
    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("file", "root") and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return list(walk(yaml.safe_load(Path(toc).read_text())))


def toc_notebooks(toc: Path = ROOT / "_toc.yml") -> list[Path]:
    """Every ``.ipynb`` page named in the table of contents."""
    pages = [ROOT / p for p in toc_pages(toc)]
    return [p.with_suffix(".ipynb") for p in pages if p.with_suffix(".ipynb").exists()]


def fingerprint() -> str:
    """A hash of everything a notebook's outputs depend on besides its own code: the package and the mode."""
    h = hashlib.sha256(f"DIFFEDU_FAST={os.environ.get('DIFFEDU_FAST', '')}".encode())
    for path in sorted((ROOT / "diffedu").rglob("*.py")):
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _fresh_cache(cache_path: Path) -> None:
    """Clear the cache if it was filled by another version of the package or in the other mode."""
    stamp = cache_path / "diffedu-fingerprint.txt"
    now = fingerprint()
    if cache_path.exists() and (not stamp.exists() or stamp.read_text() != now):
        print("execute_notebooks: the package or the mode changed since the cache was filled: clearing it", flush=True)
        shutil.rmtree(cache_path)
    cache_path.mkdir(parents=True, exist_ok=True)
    stamp.write_text(now)


def _execute_one(cache_path: str, pk: int, timeout: int) -> tuple[str, int, float, str]:
    """Run one project notebook of the cache (in a worker process) and cache its outputs."""
    from jupyter_cache import get_cache
    from jupyter_cache.cache.db import NbProjectRecord
    from jupyter_cache.executors.basic import ExecutionWorkerLocalSerial, ProcessData

    cache = get_cache(cache_path)
    uri = cache.get_project_record(pk).uri
    start = time.perf_counter()
    status, _ = ExecutionWorkerLocalSerial(logging.getLogger("execute_notebooks"))(
        ProcessData(pk, uri, cache, timeout, False))
    seconds = time.perf_counter() - start
    trace = ""
    if status != 0:
        trace = NbProjectRecord.record_from_pk(pk, cache.db).traceback or "(no traceback recorded)"
    return uri, status, seconds, trace


def _warm_feature_networks(paths: list[Path]) -> None:
    """Train each feature network that two or more of ``paths`` use, once, into the shared cache."""
    import re

    uses: dict[str, int] = {}
    for p in paths:
        for name in set(re.findall(r'feature_network\((?:\\)?["\']([a-z]+)(?:\\)?["\']\)', p.read_text())):
            uses[name] = uses.get(name, 0) + 1
    shared = sorted(n for n, k in uses.items() if k > 1)
    if shared:
        from diffedu.metrics import feature_network

        for name in shared:
            t0 = time.time()
            feature_network(name)
            print(f"execute_notebooks: feature network {name!r} ready for {uses[name]} notebooks in "
                  f"{time.time() - t0:.0f} s", flush=True)


def execute(notebooks: list[Path], cache_path: Path, jobs: int, timeout: int) -> int:
    """Add ``notebooks`` to the cache's project and execute the stale ones in parallel; 0 if all succeeded."""
    from jupyter_cache import get_cache

    _fresh_cache(cache_path)
    cache = get_cache(str(cache_path))
    records = [cache.add_nb_to_project(str(nb)) for nb in notebooks]
    stale = [r for r in records if cache.get_cached_project_nb(r.pk) is None]
    print(f"execute_notebooks: {len(records) - len(stale)} of {len(records)} notebooks cached, "
          f"executing {len(stale)} with {jobs} job(s)", flush=True)
    stale.sort(key=lambda r: -Path(r.uri).stat().st_size)  # longest (largest) first
    _warm_feature_networks([Path(r.uri) for r in stale])
    failed = 0
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(_execute_one, str(cache_path), r.pk, timeout) for r in stale]
        for fut in as_completed(futures):
            uri, status, seconds, trace = fut.result()
            name = Path(uri).name
            print(f"execute_notebooks: {name}: {'ok' if status == 0 else 'FAILED'} in {seconds:.0f} s", flush=True)
            if status != 0:
                failed += 1
                print(trace, file=sys.stderr, flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks (default: every notebook in _toc.yml)")
    parser.add_argument("--cache", type=Path, required=True, help="the build's jupyter-cache folder")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel notebooks (default: cores)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell (default 1200)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs: expected a positive number of parallel notebooks")
    notebooks = [p.resolve() for p in args.notebooks] or toc_notebooks()
    missing = [str(p) for p in notebooks if not p.exists()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    # one thread per kernel: the notebooks themselves run side by side
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    return execute(notebooks, args.cache.resolve(), args.jobs, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
