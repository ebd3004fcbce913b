"""Copy the JavaScript the book needs from node_modules/ into book/_vendor/ (run by `make vendor`).

The built book must render with no network: MathJax 3 and the ipywidgets HTML manager are served
from the book itself. `_config.yml` lists book/_vendor in `html_static_path`, so these files end up
under `_build/html/_static/`, and points `mathjax_path` and `nb_ipywidgets_js` at them.
book/_vendor is deliberately not the root `_static/` folder: Jupyter Book adds a <script> tag for
every .js file found there, which would load all of MathJax's components on every page.

Usage: python scripts/vendor_assets.py [--check]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE = ROOT / "node_modules"
DEST = ROOT / "book" / "_vendor"

# (source inside node_modules, destination inside book/_vendor)
MATHJAX = NODE / "mathjax" / "es5"
COPIES = [
    # MathJax: the combined TeX + MathML -> CommonHTML bundle, the fonts it loads, the TeX
    # extensions it may autoload and the menu / accessibility components it may load lazily.
    *[(MATHJAX / name, Path("mathjax") / name) for name in (
        "tex-mml-chtml.js", "tex-chtml.js", "loader.js", "startup.js", "core.js",
        "input", "output/chtml", "output/chtml.js", "ui", "a11y", "sre", "adaptors",
    )],
    # ipywidgets: require.js and the AMD embed bundle (with the fonts it references).
    (NODE / "requirejs" / "require.js", Path("widgets") / "require.js"),
    (NODE / "@jupyter-widgets" / "html-manager" / "dist", Path("widgets")),
]
# files from the html-manager dist that the page never needs (source maps, the non-AMD bundles)
SKIP_SUFFIXES = (".map", ".LICENSE.txt")
SKIP_NAMES = {"embed.js", "libembed-amd.js"}
# the entry points _config.yml refers to
REQUIRED = ["mathjax/tex-mml-chtml.js", "widgets/require.js", "widgets/embed-amd.js"]


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        for path in src.rglob("*"):
            if path.is_file() and not path.name.endswith(SKIP_SUFFIXES) and path.name not in SKIP_NAMES:
                _copy(path, dst / path.relative_to(src))
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime or dst.stat().st_size != src.stat().st_size:
        shutil.copy2(src, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the vendored files exist")
    args = parser.parse_args(argv)
    if not args.check:
        missing = [str(src) for src, _ in COPIES if not src.exists()]
        if missing:
            print("missing in node_modules (run `npm ci` first):\n  " + "\n  ".join(missing), file=sys.stderr)
            return 1
        for src, rel in COPIES:
            _copy(src, DEST / rel)
    absent = [name for name in REQUIRED if not (DEST / name).is_file()]
    if absent:
        print(f"not vendored: {absent} (run `make vendor`)", file=sys.stderr)
        return 1
    print(f"vendored JavaScript in {DEST.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
