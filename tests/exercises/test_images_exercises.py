"""The checkers of the images-and-evaluation chapter, and the references against the package's metrics."""
import pytest
import torch

from diffedu import metrics
from diffedu.exercises import ExerciseFailed, images


@pytest.mark.parametrize("exercise", sorted(images.EXERCISES))
def test_checkers_pass_on_references_and_fail_on_stubs_and_sign_errors(exercise):
    checker, reference = images.EXERCISES[exercise]
    assert checker(reference).passed

    def stub(*args, **kwargs):
        raise NotImplementedError

    with pytest.raises(ExerciseFailed, match="not attempted"):
        checker(stub)
    with pytest.raises(ExerciseFailed, match="sign"):
        checker(lambda *a, ref=reference, **k: -ref(*a, **k))


def test_typical_mistakes_are_caught():
    biased = lambda fx, fy: ((fx @ fx.T / fx.shape[1] + 1) ** 3).mean() + ((fy @ fy.T / fy.shape[1] + 1) ** 3).mean() \
        - 2 * ((fx @ fy.T / fx.shape[1] + 1) ** 3).mean()  # noqa: E731  (kept the diagonal: the biased V-statistic)
    with pytest.raises(ExerciseFailed):
        images.check_mmd2_unbiased(biased)
    with pytest.raises(ExerciseFailed):  # forgot the square root of the cross term
        images.check_frechet_gaussians(lambda m1, c1, m2, c2: (m1 - m2).pow(2).sum() + torch.trace(c1 + c2 - 2 * c1 @ c2))
    with pytest.raises(ExerciseFailed):
        images.check_latent_scale_factor(lambda z: z.std())


def test_references_agree_with_the_package():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    y = 0.5 + torch.randn(40, 4, generator=g, dtype=torch.float64)
    assert float(images.mmd2_unbiased(x, y)) == pytest.approx(metrics.mmd2_polynomial(x, y), rel=1e-9)
    mx, cx, my, cy = x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T)
    assert float(images.frechet_gaussians(mx, cx, my, cy)) == pytest.approx(metrics.gaussian_frechet_distance(mx, cx, my, cy), rel=1e-6)
    assert float(images.frechet_gaussians(mx, cx, my, cy)) == pytest.approx(metrics.frechet_distance(x, y), rel=1e-6)


def test_chapter_exercises_grade_full_for_solutions_zero_for_stubs(tmp_path):
    """tests/conftest.py's chapter_notebooks() lists only ch*.ipynb, so this chapter is graded here."""
    import json
    from pathlib import Path

    import nbformat

    from diffedu.exercises.notebooks import exercise_cells, grade_notebook, make_student_notebook

    path = Path(__file__).resolve().parents[2] / "chapters" / "images_evaluation.ipynb"
    full = nbformat.read(path, as_version=4)
    first = next(i for i, c in enumerate(full.cells) if c.cell_type == "code")
    keep = [first] + [i for i, c in enumerate(full.cells) if set(c.metadata.get("tags", [])) & {"solution", "check"}]
    subset = nbformat.from_dict(json.loads(json.dumps(full)))
    subset.cells = [subset.cells[i] for i in sorted(set(keep))]
    n_checks = len(exercise_cells(subset))
    assert n_checks >= 3
    nbformat.write(subset, tmp_path / "solution.ipynb")
    nbformat.write(make_student_notebook(subset), tmp_path / "stub.ipynb")
    good = grade_notebook(tmp_path / "solution.ipynb", timeout=300)
    assert good["total"] == good["passed"] == n_checks, good
    bad = grade_notebook(tmp_path / "stub.ipynb", timeout=300)
    assert bad["total"] == n_checks and bad["passed"] == 0, bad
