"""How good are the samples? Distances between sample sets and densities (monograph §1.2), and image metrics.

* :mod:`diffedu.metrics.samples` — sliced Wasserstein-2, Monte-Carlo KL, moment errors: the
  yardsticks of the 2D chapters, measured against the exact densities of :mod:`diffedu.toy`.
* :mod:`diffedu.metrics.features` — the feature network (a classifier trained on the data set
  itself, cached): :func:`feature_network`, :class:`FeatureNet` (always in eval mode).
* :mod:`diffedu.metrics.images` — Fréchet distance (FD_<net>, not FID), KID, precision/recall,
  density/coverage, the classifier score and class check, SSIM, PSNR, nearest neighbours.
* :mod:`diffedu.metrics.leaderboard` — one protocol (:class:`ImageEvaluator`) and one
  :class:`Leaderboard` that every image generator in the book appends its row to.
"""
from diffedu.metrics.samples import SlicedScore, kl_monte_carlo, moment_errors, sliced_wasserstein, sliced_wasserstein_to_target
from diffedu.metrics.features import (
    FEATURE_DATASETS, FeatureNet, cache_dir, classifier_accuracy, feature_network, train_classifier,
)
from diffedu.metrics.images import (
    PRDC, ClassCheck, class_check, classifier_score, frechet_distance, gaussian_frechet_distance, kid,
    mmd2_polynomial, nearest_neighbour_distances, precision_recall, psnr, ssim,
)
from diffedu.metrics.leaderboard import LEADERBOARD_COLUMNS, ImageEvaluator, Leaderboard

__all__ = [
    "sliced_wasserstein", "SlicedScore", "sliced_wasserstein_to_target", "kl_monte_carlo", "moment_errors",
    "FEATURE_DATASETS", "FeatureNet", "cache_dir", "classifier_accuracy", "feature_network", "train_classifier",
    "PRDC", "ClassCheck", "class_check", "classifier_score", "frechet_distance", "gaussian_frechet_distance", "kid",
    "mmd2_polynomial", "nearest_neighbour_distances", "precision_recall", "psnr", "ssim",
    "LEADERBOARD_COLUMNS", "ImageEvaluator", "Leaderboard",
]
