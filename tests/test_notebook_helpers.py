"""The notebook helpers (diffedu.notebook.show_source / slider, diffedu.data.sample_stream), and
that the chapters use them instead of re-defining them (their code cells, parsed)."""
from __future__ import annotations

import ast
import base64
import inspect
import re
import textwrap

import matplotlib

matplotlib.use("Agg")

import nbformat  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import chapter_notebooks  # noqa: E402
from diffedu import data, toy  # noqa: E402
from diffedu.baselines import flows  # noqa: E402
from diffedu.notebook import CODE_WIDTH, SliderFigure, show_source, slider, source_text  # noqa: E402
from diffedu.objectives import flow_matching  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ show_source
def test_show_source_displays_the_def_line(capsys):
    show_source(toy.eight_gaussians)   # outside IPython, display() prints the text form
    out = capsys.readouterr().out
    assert "def eight_gaussians(" in out
    assert "lambda" not in source_text(show_source)


def test_show_source_is_a_python_code_block_for_jupyter_and_the_book(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    show_source(flows.AffineCoupling.forward)
    md = shown[0]._repr_markdown_()
    assert md.startswith("```python\ndef forward(self, x") and md.rstrip().endswith("```")


def _code_only(src):
    """The AST of ``src`` without docstrings (prose may be re-wrapped; code may not change)."""
    tree = ast.parse(src)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@pytest.mark.parametrize("obj", [flow_matching.conditional_fm_loss, flows.CouplingFlow, flows.cnf_log_prob])
def test_source_lines_fit_the_code_column_and_stay_the_same_python(obj):
    text = source_text(obj)
    assert max(len(line) for line in text.splitlines()) <= CODE_WIDTH
    original = textwrap.dedent(inspect.getsource(obj))
    assert _code_only(text) == _code_only(original)


SHOWN = ["diffedu.forward", "diffedu.sde", "diffedu.toy", "diffedu.guidance", "diffedu.samplers.ode",
         "diffedu.samplers.ancestral", "diffedu.objectives.elbo", "diffedu.objectives.flow_matching",
         "diffedu.objectives.edm", "diffedu.likelihood.fokker_planck", "diffedu.baselines.flows", "diffedu.baselines.vae"]


def test_every_public_function_of_the_shown_modules_fits_and_keeps_its_code():
    import importlib

    objs = [obj for name in SHOWN for key, obj in vars(importlib.import_module(name)).items()
            if not key.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == name]
    assert len(objs) > 50
    widths = []
    for obj in objs:
        text = source_text(obj)
        assert _code_only(text) == _code_only(textwrap.dedent(inspect.getsource(obj))), obj.__qualname__
        widths.append(max(len(line) for line in text.splitlines()))
    assert sum(w > CODE_WIDTH for w in widths) <= len(objs) // 50     # unbreakable lines are rare
    assert max(widths) <= CODE_WIDTH + 10


def test_code_is_rebroken_without_changing_its_meaning():
    long = ("def f(alpha, beta, gamma, delta, epsilon, zeta, eta, theta, iota, kappa, lambda_, mu, nu, xi):\n"
            "    return g(alpha, beta, gamma, delta, epsilon, zeta, eta, theta, iota, kappa, lambda_, mu, nu, xi, 1)\n")
    from diffedu.notebook import _fit_width

    out = _fit_width(long, 60)
    assert max(len(line) for line in out.splitlines()) <= 60
    assert ast.dump(ast.parse(out)) == ast.dump(ast.parse(long))


def test_source_text_signature_only_and_without_docstring():
    sig = source_text(flows.cnf_log_prob, body=False)
    assert sig.startswith("def cnf_log_prob(") and '"""' in sig and sig.rstrip().endswith("...")
    assert "check_data" not in sig
    bare = source_text(flows.cnf_log_prob, docstring=False)
    assert '"""' not in bare and "check_data(x" in bare
    compile(sig, "<sig>", "exec")
    compile(bare, "<bare>", "exec")


def test_source_text_bad_input():
    with pytest.raises(TypeError, match="obj"):
        source_text(3)
    with pytest.raises(ValueError, match="width"):
        source_text(toy.eight_gaussians, width=5)


# ------------------------------------------------------------------ slider
def _draw(v, ax):
    ax.plot([0, 1], [0, v])
    ax.set_title(f"v = {v}")


def test_slider_precomputes_frames_in_a_stack_linked_in_the_browser():
    values = [0.0, 0.5, 1.0, 2.0, 4.0]
    sf = slider(_draw, values, description="w", value=1.0, static=3)
    assert isinstance(sf, SliderFigure)
    stack = sf.stack
    assert len(stack.children) == len(values)
    assert all(bytes(child.value).startswith(PNG) for child in stack.children)
    assert stack.selected_index == 2 and sf.slider.value == 2
    assert (sf.slider.min, sf.slider.max) == (0, len(values) - 1)
    pairs = {(link.source[0], link.source[1], link.target[0], link.target[1]) for link in sf.links}
    assert (sf.slider, "value", stack, "selected_index") in pairs    # jslink: lives in the widget state
    assert (sf.slider, "value", sf.readout, "selected_index") in pairs
    assert [c.value for c in sf.readout.children] == [f"w = {v:.4g}" for v in values]
    assert sf.stack in sf.widget.children and sf.slider in sf.widget.children[0].children


def test_slider_has_a_static_fallback_for_readers_without_widgets():
    sf = slider(_draw, [1, 2, 3], description="k")
    bundle = sf._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == sf.widget.model_id
    assert base64.b64decode(bundle["image/png"]).startswith(PNG)
    assert sf.fallback_png.startswith(PNG)


def test_slider_with_several_panels_passes_a_row_of_axes():
    seen = []

    def draw(v, axes):
        seen.append(len(axes))
        for ax in axes:
            ax.plot([0, v])

    sf = slider(draw, ["a", "b"], panels=3, static=["b"])
    assert len(sf.stack.children) == 2 and set(seen) == {3}


def test_slider_bad_input():
    with pytest.raises(TypeError, match="draw"):
        slider("nope", [1, 2])
    with pytest.raises(ValueError, match="values"):
        slider(_draw, [])
    with pytest.raises(ValueError, match="value"):
        slider(_draw, [1, 2], value=3)
    with pytest.raises(ValueError, match="panels"):
        slider(_draw, [1, 2], panels=0)
    with pytest.raises(ValueError, match="static"):
        slider(_draw, [1, 2], static=[5])


# ------------------------------------------------------------------ sample_stream
def test_sample_stream_is_seeded_and_endless():
    mix = toy.eight_gaussians()
    a, b = data.sample_stream(mix, 64, generator=3), data.sample_stream(mix, 64, generator=3)
    first = [next(a) for _ in range(50)]
    second = [next(b) for _ in range(50)]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert all(x.shape == (64, 2) for x in first)
    assert not torch.equal(first[0], first[1])                     # fresh samples every batch
    gen = torch.Generator().manual_seed(3)
    torch.testing.assert_close(next(data.sample_stream(mix, 64, generator=gen)), first[0])


def test_sample_stream_labels_and_functions():
    mix = toy.labelled_mixture()
    x, c = next(data.sample_stream(mix, 32, generator=0, labels=True))
    assert x.shape == (32, 2) and c.shape == (32,) and c.dtype == torch.long
    assert set(c.tolist()) <= set(range(mix.num_classes))
    torch.testing.assert_close(x, mix.sample(32, generator=torch.Generator().manual_seed(0)))
    moons = next(data.sample_stream(toy.two_moons, 16, generator=1))
    torch.testing.assert_close(moons, toy.two_moons(16, generator=torch.Generator().manual_seed(1)))


def test_sample_stream_bad_input():
    with pytest.raises(TypeError, match="dist"):
        data.sample_stream(3, 8)
    with pytest.raises(ValueError, match="batch_size"):
        data.sample_stream(toy.eight_gaussians(), 0)
    with pytest.raises(TypeError, match="generator"):
        data.sample_stream(toy.eight_gaussians(), 8, generator="seed")
    with pytest.raises(ValueError, match="labels"):
        data.sample_stream(toy.two_moons, 8, labels=True)


# ------------------------------------------------------------------ the chapters use the helpers
REDEFINED = {"stream", "labelled_stream", "show", "mlp"}


def _code_cells(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            lines = cell.source.splitlines()   # an IPython line (!pip ..., %magic) becomes `pass`
            src = "\n".join(re.sub(r"^(\s*)[!%].*$", r"\1pass", line) for line in lines)
            yield i, ast.parse(src)


def _redefinitions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in REDEFINED:
            yield f"defines {node.name}"
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in REDEFINED:
                    yield f"assigns {target.id} ="
        elif isinstance(node, (ast.Name, ast.Attribute)) and "getsource" in (getattr(node, "id", None), getattr(node, "attr", None)):
            yield "calls inspect.getsource (use diffedu.notebook.show_source)"
        elif isinstance(node, ast.Attribute) and node.attr == "Linear":
            yield "builds nn.Linear layers (use diffedu.nets.MLP)"
        elif isinstance(node, ast.ClassDef) and re.search(r"coupling|flow|mlp|classifier|scorenet", node.name, re.I):
            yield f"defines class {node.name} (use the package's network)"
        elif isinstance(node, ast.Attribute) and node.attr in ("observe", "interact"):
            yield f"drives a widget by .{node.attr} (needs a kernel; use diffedu.notebook.slider)"


@pytest.mark.parametrize("path", chapter_notebooks(), ids=lambda p: p.name)
def test_chapters_use_the_package_helpers(path):
    bad = [f"cell {i}: {what}" for i, tree in _code_cells(path) for what in _redefinitions(tree)]
    assert not bad, f"{path.name} re-writes package helpers:\n" + "\n".join(bad)


def test_the_redefinition_check_catches_them():
    src = ("def stream(d):\n    yield d\nshow = lambda f: print(inspect.getsource(f))\n"
           "class Coupling(nn.Module):\n    pass\nnet = nn.Linear(2, 2)\nslider.observe(f)\n")
    found = list(_redefinitions(ast.parse(src)))
    assert len(found) == 6, found
