"""One evaluation protocol and one leaderboard for every image generator in the book.

:class:`ImageEvaluator` fixes the protocol — a feature network, a reference set of real images
(the held-out split), the number N of samples every generator must bring — and computes, for a
set of samples, FD, KID, precision/recall/density/coverage, the classifier score and the
class check, all from one pass of the feature network. :class:`Leaderboard` keeps one row per
generator (with NFE, training time and sampling time) and renders a Markdown table; it can be
saved to JSON and re-opened by a later chapter, which appends its own rows. Opening a file made
under another protocol fails: distances under different feature networks or sample sizes are
not comparable. Beyond the monograph (its chapters 9-11 give the generators being compared).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Dict, List, Optional

import torch

from diffedu.metrics.features import FeatureNet
from diffedu.metrics.images import class_check, classifier_score, frechet_distance, kid, precision_recall

__all__ = ["ImageEvaluator", "Leaderboard", "LEADERBOARD_COLUMNS"]

LEADERBOARD_COLUMNS = ("name", "FD", "KID", "precision", "recall", "confident", "balanced", "NFE", "train_s",
                       "sample_ms_per_image")


class ImageEvaluator:
    """The evaluation protocol: ``ImageEvaluator(feature_net, real_images, n=1000)(samples)`` -> dict of metrics.

    ``real_images`` (M, C, H, W) in [-1, 1] is the reference set (use the held-out split, never
    the training images); its features are computed once. Every call must bring exactly ``n``
    samples, so that FD's small-sample bias is the same for every row.
    """

    def __init__(self, feature_net: FeatureNet, real_images: torch.Tensor, n: int = 1000, *, k: int = 5,
                 kid_subsets: int = 50, threshold: float = 0.9, seed: int = 0):
        if not isinstance(feature_net, FeatureNet):
            raise TypeError(f"feature_net: expected a diffedu.metrics.FeatureNet (see feature_network()), got "
                            f"{type(feature_net).__name__}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 10:
            raise ValueError(f"n: expected an int >= 10 (the number of samples per generator), got {n!r}")
        self.feature_net, self.n, self.k, self.kid_subsets, self.threshold, self.seed = \
            feature_net, n, k, kid_subsets, threshold, seed
        self.real_features = feature_net(real_images[:n])
        if len(self.real_features) < n:
            raise ValueError(f"real_images: expected at least n={n} images, got {len(real_images)}")

    @property
    def protocol(self) -> Dict[str, object]:
        """What must match for two rows to be comparable."""
        return {"feature_net": self.feature_net.name, "features": int(self.feature_net.num_features), "n": self.n,
                "k": self.k, "threshold": self.threshold}

    def __call__(self, samples: torch.Tensor) -> Dict[str, object]:
        """FD, KID (mean), precision, recall, density, coverage, classifier score, confident fraction, balance."""
        if not torch.is_tensor(samples) or samples.ndim != 4 or len(samples) != self.n:
            raise ValueError(f"samples: expected exactly n={self.n} images (n, C, H, W), got "
                             f"{tuple(getattr(samples, 'shape', ())) or type(samples).__name__}")
        if not torch.isfinite(samples).all():
            raise ValueError("samples: contain NaN or inf (did the sampler diverge?)")
        feats = self.feature_net(samples)
        probs = self.feature_net.probs(samples)
        prdc = precision_recall(self.real_features, feats, k=self.k)
        check = class_check(probs, self.threshold)
        return {"FD": frechet_distance(self.real_features, feats),
                "KID": kid(self.real_features, feats, subsets=self.kid_subsets, seed=self.seed)[0],
                **prdc._asdict(), "IS": classifier_score(probs), "confident": check.confident,
                "balanced": check.balanced(), "class_fractions": [round(float(v), 4) for v in check.class_fractions]}


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "" if math.isnan(v) else (f"{v:.4f}" if abs(v) < 0.1 else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}")
    return str(v)


class Leaderboard:
    """Rows of metrics, one per generator, under one :class:`ImageEvaluator` protocol.

    >>> board = Leaderboard(evaluator)                       # or Leaderboard(evaluator, path="board.json")
    >>> board.add("DDIM, NFE 20", samples, nfe=20, train_s=300.0, sample_s=12.0)
    >>> board                                                # renders as a Markdown table in Jupyter

    With a ``path``, existing rows are loaded (if the file's protocol matches) and every
    :meth:`add` rewrites the file atomically; a row with an existing name replaces it.
    """

    def __init__(self, evaluator: ImageEvaluator, path: Optional[str] = None):
        if not isinstance(evaluator, ImageEvaluator):
            raise TypeError(f"evaluator: expected an ImageEvaluator, got {type(evaluator).__name__}")
        self.evaluator, self.path = evaluator, None if path is None else os.fspath(path)
        self.rows: List[Dict[str, object]] = []
        if self.path is not None and os.path.exists(self.path):
            with open(self.path) as f:
                saved = json.load(f)
            if saved.get("protocol") != evaluator.protocol:
                raise ValueError(f"path: {self.path} was written under protocol {saved.get('protocol')}, not "
                                 f"{evaluator.protocol}; distances under different protocols are not comparable")
            self.rows = list(saved["rows"])

    def add(self, name: str, samples: torch.Tensor, *, nfe: Optional[int] = None, train_s: Optional[float] = None,
            sample_s: Optional[float] = None, **extra) -> Dict[str, object]:
        """Evaluate ``samples`` (exactly n images) and add (or replace) the row ``name``; returns the row."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty string, got {name!r}")
        row = {"name": name, **self.evaluator(samples), "NFE": nfe, "train_s": train_s,
               "sample_ms_per_image": None if sample_s is None else 1000.0 * float(sample_s) / self.evaluator.n, **extra}
        self.rows = [r for r in self.rows if r["name"] != name] + [row]
        if self.path is not None:
            self.save(self.path)
        return row

    def save(self, path: str) -> None:
        """Write protocol and rows to ``path`` as JSON, atomically (a temporary file, then os.replace)."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=directory)
        with os.fdopen(fd, "w") as f:
            json.dump({"protocol": self.evaluator.protocol, "rows": self.rows}, f, indent=1)
        os.replace(tmp, path)

    def best(self, metric: str = "FD") -> Dict[str, object]:
        """The row with the smallest ``metric``."""
        if not self.rows:
            raise ValueError("best: the leaderboard has no rows yet")
        return min(self.rows, key=lambda r: float(r[metric]))

    def table(self, columns=LEADERBOARD_COLUMNS, sort_by: Optional[str] = "FD") -> str:
        """The rows as a Markdown table (sorted by ``sort_by``, ascending); ``FD`` is FD_<feature net>."""
        rows = sorted(self.rows, key=lambda r: float(r[sort_by])) if sort_by else self.rows
        label = {"FD": f"FD_{self.evaluator.feature_net.name}"}
        head = "| " + " | ".join(label.get(c, c) for c in columns) + " |"
        rule = "|" + "|".join("---" for _ in columns) + "|"
        body = ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
        return "\n".join([head, rule, *body]) + f"\n\nN = {self.evaluator.n} samples per row against {self.evaluator.n} held-out digits."

    def _repr_markdown_(self) -> str:
        return self.table()
