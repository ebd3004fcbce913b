"""Small helpers every chapter notebook uses: CI mode, a device, a seed, package source, sliders.

A chapter runs in one of two modes and the same code paths serve both:

* **reader mode** (the default) uses the budgets the text talks about (training steps, sample
  sizes) and takes minutes on a laptop CPU;
* **CI mode** (environment variable ``DIFFEDU_FAST=1``) shrinks those budgets so that the test
  suite and the book build stay fast, while the notebook still asserts the quality it claims.

Nothing here holds a global device: :func:`pick_device` returns one, and the notebook passes it
on explicitly.

The display helpers: :func:`show_source` shows the package code a chapter derives (instead of
copying it), :func:`slider` an interactive figure that also works in the rendered book, without
a kernel, and :func:`animation_html` a matplotlib animation that plays offline. Like
:mod:`diffedu.viz`, this top layer may import matplotlib, ipywidgets and IPython (inside the
functions that need them); nothing below it does.
"""
from __future__ import annotations

import ast
import base64
import inspect
import io
import os
import random
import re
import textwrap
import tokenize
from typing import Any, Callable, NamedTuple, Optional, Sequence, TypeVar

import torch

__all__ = ["FAST_ENV", "fast_mode", "budget", "pick_device", "seed_everything", "animation_html",
           "source_text", "show_source", "slider", "SliderFigure"]

#: The one switch: ``DIFFEDU_FAST=1`` selects CI mode.
FAST_ENV = "DIFFEDU_FAST"

T = TypeVar("T")

_FALSE = {"", "0", "false", "no", "off"}


def fast_mode() -> bool:
    """True when the environment variable ``DIFFEDU_FAST`` is set to a true value (``1``, ``yes``...).

    Reader mode is the default; ``DIFFEDU_FAST=0`` (or unset) keeps it.
    """
    return os.environ.get(FAST_ENV, "").strip().lower() not in _FALSE


def budget(fast: T, reader: T) -> T:
    """Pick a budget: ``fast`` in CI mode (``DIFFEDU_FAST=1``), ``reader`` otherwise.

    >>> steps = budget(fast=300, reader=3000)
    """
    return fast if fast_mode() else reader


def pick_device(prefer: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` (or the environment variable ``DIFFEDU_DEVICE``) overrides the choice, e.g. to
    force ``"cpu"`` on a machine with a GPU. The result is returned, never stored globally.
    """
    from diffedu.engine.device import resolve_device

    return resolve_device(prefer or os.environ.get("DIFFEDU_DEVICE") or "auto")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices) and return a CPU ``torch.Generator`` seeded alike.

    Pass the returned generator explicitly wherever reproducibility matters (sampling data,
    drawing noise); the global seeds only make the rest (weight initialisation) repeatable.
    """
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# matplotlib's JavaScript player styles its buttons with Font Awesome 4 from a CDN; the book is
# read offline, so the stylesheet link is dropped and each icon becomes a plain character.
_FA_ICONS = {
    "fa-minus": "\u2212", "fa-fast-backward": "|\u25c0", "fa-step-backward": "\u25c0|",
    "fa-play fa-flip-horizontal": "\u25c0", "fa-pause": "||", "fa-play": "\u25b6",
    "fa-step-forward": "|\u25b6", "fa-fast-forward": "\u25b6|", "fa-plus": "+",
}


def animation_html(anim, *, close: bool = True):
    """An ``IPython.display.HTML`` player for a matplotlib animation that works offline.

    Wraps ``anim.to_jshtml()`` (frames embedded as images, controls in plain JavaScript) and
    removes its only network dependency, the Font Awesome stylesheet, so the rendered book
    needs nothing from a CDN. ``close`` closes the figure so it is not drawn a second time.
    """
    from IPython.display import HTML

    text = anim.to_jshtml()
    text = re.sub(r'<link rel="stylesheet"\s+href="https?://[^"]*font-awesome[^"]*">', "", text)
    for cls, char in _FA_ICONS.items():
        text = text.replace(f'<i class="fa {cls}"></i>', f'<span aria-hidden="true">{char}</span>')
    if close:
        import matplotlib.pyplot as plt

        plt.close(anim._fig)
    return HTML(text)


# ----------------------------------------------------------------------------------------------
# package source, shown in the chapters instead of copied into them

#: The width of the book's code column (and of a notebook cell), in characters.
CODE_WIDTH = 88

_KEYWORD_BREAKS = {"and", "or", "if", "else", "for", "in", "not"}
# a prose line that starts a new item: a bullet, a doctest, an "Args:"-style field, the closing quotes
_NEW_ITEM = re.compile(r"(?:[*\-+] |\d+[.)] |>>>|\.\.\. |\"\"\"|'''|[\w*]+(?: \([^)]*\))?: )")
_TRIPLE = ('"""', "'''")
_FSTRING_START = getattr(tokenize, "FSTRING_START", -1)   # Python >= 3.12
_FSTRING_END = getattr(tokenize, "FSTRING_END", -1)


class _Break(NamedTuple):
    col: int         # break before this column of the line
    rank: tuple      # lower is better: (tier, bracket depth); tier 0 natural, 1 any token, 2 a string split
    indent: int      # extra indent of the continuation line
    close: str = ""  # appended to the piece before the break (closes a split string)
    open: str = ""   # prepended to the continuation (reopens the string)


def _string_parts(text: str):
    """(prefix, quote) of a one-line string literal, or None if it is triple-quoted."""
    m = re.match(r"([A-Za-z]*)(['\"])", text)
    if m is None or text[len(m.group(1)):].startswith(m.group(2) * 3):
        return None
    return m.group(1), m.group(2)


def _spaces(text: str, base: int, skip_braces: bool = False) -> list:
    """Columns just after the inner spaces of ``text`` (which starts at column ``base``)."""
    depth, out = 0, []
    for i, ch in enumerate(text):
        depth += ((ch == "{") - (ch == "}")) if skip_braces else 0
        if ch == " " and depth == 0 and 0 < i < len(text) - 1:
            out.append(base + i + 1)
    return out


def _code_breaks(line: str, extra: int) -> Optional[list]:
    """The places where one logical line of code may be broken and stay valid Python (None: unknown)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line + "\n").readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    out, depth, inside_f, f_start = [], 0, 0, 0
    for tok in tokens:
        sc, ec = tok.start[1], tok.end[1]
        if tok.type == _FSTRING_END or inside_f:    # Python >= 3.12 tokenises inside f-strings: no break there,
            inside_f += (tok.type == _FSTRING_START) - (tok.type == _FSTRING_END)   # but the literal may split
            if not inside_f and depth > 0 and (parts := _string_parts(line[f_start:ec])):
                out += [_Break(c, (2, depth), extra, parts[1], parts[0] + parts[1])
                        for c in _spaces(line[f_start:ec], f_start, True)]
            continue
        inside_f, f_start = int(tok.type == _FSTRING_START), sc
        if tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        if depth > 0 and tok.type == tokenize.STRING and (parts := _string_parts(tok.string)):
            out += [_Break(c, (2, depth), extra, parts[1], parts[0] + parts[1])
                    for c in _spaces(line[sc:ec], sc, "f" in parts[0].lower())]
        if depth > 0 and tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER):
            natural = tok.type == tokenize.NAME and tok.string in _KEYWORD_BREAKS
            out.append(_Break(sc, (0 if natural else 1, depth), extra))
        if tok.type == tokenize.OP and tok.string == "," and depth > 0:
            out.append(_Break(ec, (0, depth), extra))
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
            out.append(_Break(ec, (0, depth), extra))
    return out


def _split_line(line: str, breaks: list, width: int) -> list:
    """Greedy: break ``line`` at the best allowed place (then the right-most) until the pieces fit."""
    indent = len(line) - len(line.lstrip())
    pieces, start, lead = [], 0, ""
    while len(lead) + len(line) - start > width:
        limit = start + width - len(lead)
        fits = [b for b in breaks if start < b.col <= limit - len(b.close) and line[start:b.col].strip()]
        if not fits:
            break
        best = min(fits, key=lambda b: (b.rank, -b.col))
        piece = line[start:best.col]
        pieces.append(lead + (piece + best.close if best.close else piece.rstrip()))
        start, lead = best.col, " " * (indent + best.indent) + best.open
        while not best.close and start < len(line) and line[start] == " ":
            start += 1
    return pieces + [lead + line[start:]]


def _wrap_prose(lead: str, text: str, width: int) -> list:
    return _split_line(lead + text, [_Break(c, (0, 0), 0) for c in _spaces(text, len(lead))], width)


def _reflow(lines: list, width: int, comment: bool) -> list:
    """Re-wrap prose (a docstring or a comment block): a long line's tail runs on into the next line."""
    out, carry, carry_lead = [], "", ""
    for line in lines:
        m = re.match(r"(\s*#\s?)(.*)$" if comment else r"(\s*)(.*)$", line)
        lead, text = m.group(1), m.group(2).rstrip()
        if carry and lead == carry_lead and text and not _NEW_ITEM.match(text):
            text = carry + " " + text
        elif carry:
            out += _wrap_prose(carry_lead, carry, width)
        carry = ""
        pieces = _wrap_prose(lead, text, width)
        if len(pieces) > 1:
            carry, carry_lead, pieces = pieces[-1][len(lead):], lead, pieces[:-1]
        out += pieces
    return out + (_wrap_prose(carry_lead, carry, width) if carry else [])


def _token_kind(tok) -> Optional[str]:
    if tok.type in (tokenize.NL, tokenize.NEWLINE):
        return None
    if tok.type == tokenize.COMMENT:
        return "comment"
    if tok.type == tokenize.STRING and tok.string.lstrip("rRbBuUfF").startswith(_TRIPLE):
        return "prose"
    return "code"


def _statements(src: str) -> Optional[list]:
    """(first row, last row, kind) of every statement, comment line and docstring of ``src``."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    out, first, kinds, depth = [], None, set(), 0
    for tok in tokens:
        if tok.type in (tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            continue
        if tok.type == tokenize.NL and first is None:
            continue
        first = tok.start[0] if first is None else first
        kinds |= {_token_kind(tok)} - {None}
        if tok.type == tokenize.OP and tok.string in "([{)]}":
            depth += 1 if tok.string in "([{" else -1
        if tok.type in (tokenize.NEWLINE, tokenize.NL) and kinds and depth == 0:
            out.append((first, tok.start[0], kinds.pop() if len(kinds) == 1 else "mixed"))
            first, kinds = None, set()
    return out


def _join(block: list) -> str:
    joined = block[0].rstrip()
    for part in (line.strip() for line in block[1:]):
        tight = joined.endswith(("(", "[", "{")) or part.startswith((")", "]", "}"))
        joined += ("" if tight else " ") + part
    return joined


def _trailing_comment(line: str) -> Optional[int]:
    """The column of the comment that ends ``line`` (one statement), or None."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line + "\n").readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    cols = [tok.start[1] for tok in tokens if tok.type == tokenize.COMMENT]
    return cols[0] if len(cols) == 1 and line[:cols[0]].strip() else None


def _fit_code(block: list, kind: str, width: int) -> list:
    """One statement of code re-broken to ``width``; a trailing comment moves to its own line above."""
    comment = []
    if kind == "mixed":
        col = _trailing_comment(block[0]) if len(block) == 1 else None
        if col is None:
            return block
        indent = block[0][: len(block[0]) - len(block[0].lstrip())]
        comment = _reflow([indent + block[0][col:].strip()], width, comment=True)
        block = [block[0][:col].rstrip()]
        if len(block[0]) <= width:
            return comment + block
    joined = _join(block)
    m = re.match(r"(\s*from\s+\S+\s+import\s+)([^(].*)$", joined)
    if m:                                               # from m import a, b  ->  from m import (a, b)
        joined = f"{m.group(1)}({m.group(2)})"
    lines = _break_code(joined, width)
    if lines is not None and max(map(len, lines)) > width and (wrapped := _parenthesise(joined)):
        lines = min(lines, _break_code(wrapped, width) or lines, key=lambda ls: sum(len(x) > width for x in ls))
    return comment + (block if lines is None else lines)


def _break_code(joined: str, width: int) -> Optional[list]:
    breaks = _code_breaks(joined, 8 if joined.endswith(":") else 4)
    return None if breaks is None else _split_line(joined, breaks, width)


# the expression of `return e`, `if e:`, `x = e`... may be put in parentheses, inside which it can break
_HEAD = re.compile(r"(\s*(?:return|yield|assert|if|elif|while)\s+|\s*[^=()\[\]{}\"'#]+?\s(?:[-+*/%@|&^]|//|\*\*)?=\s+)(.+?)(:?)$")


def _parenthesise(joined: str) -> Optional[str]:
    m = _HEAD.match(joined)
    if m is None or m.group(2).startswith(("(", "[", "{")) or (m.group(3) and "if" not in m.group(1)
                                                                and "while" not in m.group(1)):
        return None
    return f"{m.group(1)}({m.group(2)}){m.group(3)}"


def _fit_width(src: str, width: int = CODE_WIDTH) -> str:
    """Re-break the lines of ``src`` longer than ``width`` (where Python allows it) for display."""
    lines = src.splitlines()
    spans = _statements(src) if any(len(line) > width for line in lines) else None
    if spans is None:
        return src
    out, row = [], 1
    for first, last, kind in spans:
        out += lines[row - 1:first - 1]
        block, row = lines[first - 1:last], last + 1
        if all(len(line) <= width for line in block):
            out += block
        elif kind in ("prose", "comment"):
            out += _reflow(block, width, comment=kind == "comment")
        elif kind in ("code", "mixed") and not any(line.rstrip().endswith("\\") for line in block):
            out += _fit_code(block, kind, width)
        else:
            out += block
    out += lines[row - 1:]
    return "\n".join(out) + ("\n" if src.endswith("\n") else "")


def _select(src: str, docstring: bool, body: bool) -> str:
    """``src`` (one def or class) without its docstring and/or with its body replaced by ``...``."""
    if docstring and body:
        return src
    node = ast.parse(src).body[0]
    lines = src.splitlines()
    first = node.body[0]
    has_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
        and isinstance(first.value.value, str) and first.lineno > node.lineno
    head = lines[: first.lineno - 1]
    doc = lines[first.lineno - 1: first.end_lineno] if has_doc else []
    rest = lines[first.end_lineno if has_doc else first.lineno - 1:]
    pad = " " * first.col_offset
    kept = head + (doc if docstring else []) + (rest if body else [pad + "..."])
    return "\n".join(kept) + "\n"


def source_text(obj: Any, *, docstring: bool = True, body: bool = True, width: int = CODE_WIDTH) -> str:
    """The source code of a package function, class or method, as text that fits ``width`` columns.

    ``docstring=False`` drops the docstring, ``body=False`` keeps only the signature (and the
    docstring): the interface a chapter talks about. Lines longer than ``width`` are broken where
    Python allows it (after commas, inside brackets, in prose), so the code stays valid.
    """
    try:
        src = textwrap.dedent(inspect.getsource(obj))
    except (TypeError, OSError) as err:
        raise TypeError(f"obj: expected a function, class or method defined in a source file, "
                        f"got {type(obj).__name__} ({err})") from None
    if isinstance(width, bool) or not isinstance(width, int) or width < 20:
        raise ValueError(f"width: expected an int >= 20, got {width!r}")
    return _fit_width(_select(src, bool(docstring), bool(body)), width)


class _SourceCode:
    """Displays as a fenced Python code block (Markdown) in Jupyter, Colab and the book; plain text elsewhere."""

    def __init__(self, text: str):
        self.text = text

    def _repr_markdown_(self) -> str:
        fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", self.text)), default=0))
        return f"{fence}python\n{self.text.rstrip()}\n{fence}\n"

    def __repr__(self) -> str:
        return self.text.rstrip()


def show_source(obj: Any, *, docstring: bool = True, body: bool = True, width: int = CODE_WIDTH) -> None:
    """Display the source of a package function or class as a syntax-highlighted code block.

    The chapters show the code they derive this way instead of copying it (monograph and
    package point at each other). Arguments as in :func:`source_text`.

    >>> from diffedu import sde
    >>> show_source(sde.diffusion_sq)      # doctest: +SKIP
    """
    from IPython.display import display

    display(_SourceCode(source_text(obj, docstring=docstring, body=body, width=width)))


# ----------------------------------------------------------------------------------------------
# sliders that work without a kernel

#: Colours kept per frame: a 128-colour palette makes the PNGs (embedded in the book's pages)
#: about four times smaller than full RGBA, with no visible change on these plots.
_PALETTE = 128


def _save_png(fig, dpi: int) -> bytes:
    from PIL import Image

    raw = io.BytesIO()
    fig.savefig(raw, format="png", dpi=dpi)
    raw.seek(0)
    small = io.BytesIO()
    Image.open(raw).convert("RGB").quantize(_PALETTE, method=Image.Quantize.MEDIANCUT).save(small, format="png", optimize=True)
    return small.getvalue()


def _png(draw: Callable, value, panels: int, panel_size, dpi: int) -> bytes:
    """Draw one frame, ``draw(value, ax)`` (``draw(value, axes)`` for several panels), as PNG bytes."""
    import matplotlib.pyplot as plt

    w, h = panel_size
    fig, axes = plt.subplots(1, panels, figsize=(w * panels, h), squeeze=False, layout="constrained")
    try:
        draw(value, axes[0] if panels > 1 else axes[0, 0])
        return _save_png(fig, dpi)
    finally:
        plt.close(fig)


def _fallback_png(draw: Callable, values: Sequence, panels: int, panel_size, dpi: int) -> bytes:
    """Small multiples: the chosen frames side by side (one row per frame when a frame has panels)."""
    import matplotlib.pyplot as plt

    w, h = panel_size
    rows, cols = (1, len(values)) if panels == 1 else (len(values), panels)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False, layout="constrained")
    try:
        for k, value in enumerate(values):
            draw(value, axes[0, k] if panels == 1 else axes[k])
        return _save_png(fig, dpi)
    finally:
        plt.close(fig)


def _label(description: str, value) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{description} = {text}" if description else text


def _check_slider_args(draw, values, value, panels, panel_size, static, dpi) -> int:
    if not callable(draw):
        raise TypeError(f"draw: expected a function draw(value, ax), got {type(draw).__name__}")
    if not values:
        raise ValueError("values: expected a non-empty sequence of slider positions")
    if value is not None and value not in values:
        raise ValueError(f"value: expected one of values {list(values)!r}, got {value!r}")
    for name, v, low in (("panels", panels, 1), ("dpi", dpi, 10)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
    if len(panel_size) != 2 or min(panel_size) <= 0:
        raise ValueError(f"panel_size: expected (width, height) in inches, got {panel_size!r}")
    if isinstance(static, int) and not isinstance(static, bool):
        if static < 1:
            raise ValueError(f"static: expected a number of frames >= 1 or a list of values, got {static}")
    elif not static or any(v not in values for v in static):
        raise ValueError(f"static: expected a number of frames or a non-empty list of values, got {static!r}")
    return list(values).index(value) if value is not None else 0


class SliderFigure:
    """What :func:`slider` returns: an ipywidgets box, plus a static image for readers without widgets.

    ``widget`` is the box (slider, readout, frames); ``slider`` the ``IntSlider`` (its value is
    the frame index), ``stack`` the ``ipywidgets.Stack`` of frame images, ``links`` the two
    ``jslink`` s that tie the slider to the frames and to the readout; ``fallback_png`` the
    small-multiples figure. Displayed, it offers both: a notebook or page with the widget
    manager shows the live widget, anything else (GitHub, a PDF) shows the static image.
    """

    def __init__(self, widget, slider, stack, readout, links, values, fallback_png: bytes):
        self.widget, self.slider, self.stack, self.readout = widget, slider, stack, readout
        self.links, self.values, self.fallback_png = links, list(values), fallback_png

    def _repr_mimebundle_(self, **kwargs):
        data = self.widget._repr_mimebundle_(**kwargs)
        data["image/png"] = base64.b64encode(self.fallback_png).decode("ascii")
        data["text/plain"] = f"<slider over {len(self.values)} precomputed frames>"
        return data


def slider(draw: Callable, values: Sequence, *, description: str = "", value: Any = None, panels: int = 1,
           panel_size=(4.0, 4.0), static: Any = 4, dpi: int = 72) -> SliderFigure:
    """A slider over precomputed figures that works in Jupyter, on Colab *and* in the static book.

    ``draw(value, ax)`` (``draw(value, axes)`` with ``panels > 1``: a row of that many axes)
    draws the figure for one slider position; it is called once per entry of ``values`` and the
    frames are kept as PNG images in an ``ipywidgets.Stack``. The slider's position is linked to
    the stack by ``jslink``, in the browser: the link lives in the saved widget state, so the
    rendered book (no kernel) changes the figure as the slider moves, and so does a live
    notebook. The readout shows ``description = value``. ``static`` (a number of evenly spaced
    frames, or a list of values) makes the small-multiples fallback for readers without widgets.
    Returns a :class:`SliderFigure`; make it the last expression of the cell (or ``display`` it).
    """
    import ipywidgets as widgets

    index = _check_slider_args(draw, values, value, panels, panel_size, static, dpi)
    values = list(values)
    if isinstance(static, int):
        k = min(static, len(values))
        picks = [values[round(i * (len(values) - 1) / max(k - 1, 1))] for i in range(k)]
    else:
        picks = list(static)
    frames = [widgets.Image(value=_png(draw, v, panels, panel_size, dpi), format="png") for v in values]
    stack = widgets.Stack(children=frames, selected_index=index)
    readout = widgets.Stack(children=[widgets.Label(_label(description, v)) for v in values], selected_index=index)
    control = widgets.IntSlider(value=index, min=0, max=len(values) - 1, readout=False, continuous_update=True,
                                description=description, style={"description_width": "initial"})
    links = (widgets.jslink((control, "value"), (stack, "selected_index")),
             widgets.jslink((control, "value"), (readout, "selected_index")))
    box = widgets.VBox([widgets.HBox([control, readout]), stack])
    fallback = _fallback_png(draw, picks, panels, panel_size, dpi)
    return SliderFigure(box, control, stack, readout, links, values, fallback)
