"""How good are image samples? Fréchet distance, KID, precision/recall, classifier checks, SSIM and PSNR.

Beyond the monograph (the overview paper arXiv 2412.01371 describes FID, the Inception score,
SSIM and PSNR). Every distance here compares *features*, tensors (N, D) from a feature network
(:func:`diffedu.metrics.feature_network`); the statistics themselves come from torchmetrics where
it has them (Fréchet distance, KID, SSIM, PSNR), fed through an identity "feature" module, so
the package computes features once and never re-implements those statistics. The lessons —
the closed form between Gaussians, the unbiased MMD estimator — are written out in
:func:`gaussian_frechet_distance` and :func:`mmd2_polynomial` and tested against torchmetrics.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn

__all__ = [
    "frechet_distance", "gaussian_frechet_distance", "kid", "mmd2_polynomial", "PRDC", "precision_recall",
    "classifier_score", "ClassCheck", "class_check", "ssim", "psnr", "nearest_neighbour_distances",
]


class _Identity(nn.Module):
    """The features are already computed: torchmetrics' ``feature`` module just passes them on."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f


def _features(f, name: str, min_n: int = 2) -> torch.Tensor:
    if not torch.is_tensor(f):
        raise TypeError(f"{name}: expected a feature tensor (N, D) (e.g. feature_net(images)), got {type(f).__name__}")
    if f.ndim != 2:
        hint = "; pass features, e.g. feature_net(images), not images" if f.ndim == 4 else ""
        raise ValueError(f"{name}: expected features of shape (N, D), got {tuple(f.shape)}{hint}")
    if not f.is_floating_point():
        raise TypeError(f"{name}: expected floating features, got dtype {f.dtype}")
    if f.shape[0] < min_n:
        raise ValueError(f"{name}: need at least {min_n} samples, got {f.shape[0]}")
    if not torch.isfinite(f).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return f.detach().double().cpu()


def _pair(real, fake, min_n: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    r, f = _features(real, "real", min_n), _features(fake, "fake", min_n)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"fake: expected {r.shape[1]} features like real, got {f.shape[1]} (same feature network?)")
    return r, f


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D), via torchmetrics.

    FD = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^{1/2}) (Heusel et al. 2017). With features
    of Inception-v3 it is FID; with ours, call it FD_<feature net> (e.g. FD_DigitCNN). It is biased
    upwards at finite N (about c / N): compare two models only at the same N, next to the
    real-vs-real floor at that N.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    r, f = _pair(real, fake)
    metric = FrechetInceptionDistance(feature=_Identity(r.shape[1]), reset_real_features=True)
    metric.update(r, real=True)
    metric.update(f, real=False)
    return float(metric.compute().clamp_min(0.0))


def gaussian_frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """The closed form W_2^2(N(mu1, cov1), N(mu2, cov2)) = ||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1^{1/2} cov2 cov1^{1/2})^{1/2}).

    The lesson behind FD, computed with ``scipy.linalg.sqrtm`` in float64 (Dowson & Landau 1982).
    """
    from scipy.linalg import LinAlgWarning, sqrtm

    m1, m2 = (np.asarray(torch.as_tensor(m, dtype=torch.float64)) for m in (mu1, mu2))
    c1, c2 = (np.asarray(torch.as_tensor(c, dtype=torch.float64)) for c in (cov1, cov2))
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"mu1, cov1, mu2, cov2: expected shapes (D,), (D, D), (D,), (D, D), got "
                         f"{m1.shape}, {c1.shape}, {m2.shape}, {c2.shape}")
    with warnings.catch_warnings():  # singular covariances (dead ReLU features) are fine: PSD square roots exist
        warnings.simplefilter("ignore", LinAlgWarning)
        r1 = np.real(sqrtm(c1))
        cross = np.real(sqrtm(r1 @ c2 @ r1))
    return float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(cross))


def mmd2_polynomial(fx: torch.Tensor, fy: torch.Tensor, degree: int = 3, coef: float = 1.0) -> float:
    """Unbiased MMD^2 with the cubic kernel k(a, b) = (a.b / D + 1)^3: the KID statistic (Binkowski et al. 2018).

    MMD_u^2 = sum_{i != j} k(x_i, x_j) / (m(m-1)) + sum_{i != j} k(y_i, y_j) / (n(n-1)) - 2 sum_{i,j} k(x_i, y_j) / (m n):
    dropping the diagonal makes it unbiased (its mean over draws is the true MMD^2, 0 for equal
    laws), so unlike FD it does not need equal N and it can come out slightly negative.
    """
    x, y = _pair(fx, fy)
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + coef) ** degree  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 50, subset_size: Optional[int] = None,
        seed: int = 0) -> Tuple[float, float]:
    """Kernel Inception Distance (mean, std over ``subsets`` random subsets), via torchmetrics, seeded.

    Each subset draws ``subset_size`` (default: min(N, M, 1000)) rows of each set without
    replacement and evaluates the unbiased cubic-kernel MMD^2 (:func:`mmd2_polynomial`).
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    r, f = _pair(real, fake)
    size = min(len(r), len(f), 1000) if subset_size is None else subset_size
    if isinstance(size, bool) or not isinstance(size, int) or not 2 <= size <= min(len(r), len(f)):
        raise ValueError(f"subset_size: expected an int in [2, {min(len(r), len(f))}], got {subset_size!r}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Identity(r.shape[1]), subsets=int(subsets), subset_size=size)
    metric.update(r, real=True)
    metric.update(f, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


class PRDC(NamedTuple):
    """Precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020), each in [0, 1] (density can exceed 1)."""

    precision: float
    recall: float
    density: float
    coverage: float


def _kth_distance(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest other row (the k-NN ball radius)."""
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # +1: the row itself is at distance 0


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> PRDC:
    """Precision / recall / density / coverage of fake features against real ones, with k-NN balls.

    Precision: fraction of fake samples inside the union of the real k-NN balls (are the samples
    realistic?); recall: fraction of real samples inside the union of the fake balls (is the data
    covered?). Density counts how many real balls hold each fake sample (/ k); coverage is the
    fraction of real balls that hold at least one fake sample. Use the same N for both sets.
    """
    r, f = _pair(real, fake, min_n=2)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < min(len(r), len(f)):
        raise ValueError(f"k: expected an int in [1, {min(len(r), len(f)) - 1}], got {k!r}")
    rad_r, rad_f = _kth_distance(r, k), _kth_distance(f, k)
    d = torch.cdist(r, f)  # (N_real, N_fake)
    inside_real = d <= rad_r[:, None]
    precision = inside_real.any(0).double().mean()
    recall = (d <= rad_f[None, :]).any(1).double().mean()
    density = inside_real.double().sum(0).mean() / k
    coverage = (d.min(1).values <= rad_r).double().mean()
    return PRDC(float(precision), float(recall), float(density), float(coverage))


def _probs(p) -> torch.Tensor:
    if not torch.is_tensor(p) or p.ndim != 2 or not p.is_floating_point():
        raise ValueError(f"probs: expected class probabilities (N, K), got {getattr(p, 'shape', type(p).__name__)}")
    if (p < 0).any() or not torch.allclose(p.sum(-1), torch.ones(len(p), dtype=p.dtype, device=p.device), atol=1e-4):
        raise ValueError("probs: rows must be probability vectors (non-negative, summing to 1); pass softmax(logits)")
    return p.detach().double().cpu()


def classifier_score(probs: torch.Tensor) -> float:
    """The Inception-style score exp(E_x KL(p(y | x) || p(y))) of class probabilities (N, K) (Salimans et al. 2016).

    Between 1 (every sample gets the same class distribution) and K (confident and balanced).
    """
    p = _probs(probs)
    marginal = p.mean(0, keepdim=True)
    kl = (p * (torch.log(p.clamp_min(1e-12)) - torch.log(marginal.clamp_min(1e-12)))).sum(1)
    return float(torch.exp(kl.mean()))


class ClassCheck(NamedTuple):
    """:func:`class_check`: fraction of confident samples, and the fraction assigned to each class (K,)."""

    confident: float
    class_fractions: torch.Tensor

    def balanced(self, low: float = 0.05, high: float = 0.20) -> bool:
        """Does every class get between ``low`` and ``high`` of the samples?"""
        return bool(((self.class_fractions >= low) & (self.class_fractions <= high)).all())


def class_check(probs: torch.Tensor, threshold: float = 0.9) -> ClassCheck:
    """Are the samples digits? The fraction whose top class has probability >= ``threshold``, and the class histogram."""
    p = _probs(probs)
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold: expected a probability in (0, 1), got {threshold!r}")
    conf, cls = p.max(1)
    fractions = torch.bincount(cls, minlength=p.shape[1]).double() / len(p)
    return ClassCheck(float((conf >= threshold).double().mean()), fractions)


def _image_pair(x, y):
    for name, v in (("x", x), ("y", y)):
        if not torch.is_tensor(v) or not v.is_floating_point() or v.ndim != 4:
            raise ValueError(f"{name}: expected floating images (B, C, H, W) in [-1, 1], got "
                             f"{getattr(v, 'dtype', type(v).__name__)} {tuple(getattr(v, 'shape', ()))}")
        if v.abs().max() > 1.0 + 1e-3:
            raise ValueError(f"{name}: values reach {float(v.abs().max()):.3g}; expected images in [-1, 1] "
                             "(diffedu's convention; clamp samples, or map 8-bit pixels by x / 127.5 - 1)")
    if x.shape != y.shape:
        raise ValueError(f"y: expected the shape of x {tuple(x.shape)}, got {tuple(y.shape)}")
    return x.detach().double(), y.detach().double()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (B,) of images in [-1, 1] (Wang et al. 2004; torchmetrics, 11x11 Gaussian window).

    1 for identical images, lower for worse reconstructions; data range 2.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _image_pair(x, y)
    return structural_similarity_index_measure(a, b, data_range=2.0, reduction="none").float()


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image (B,) in dB, of images in [-1, 1]: 10 log10(2^2 / MSE) (torchmetrics).

    Identical images give ``inf`` (MSE = 0; no cap). Additive noise of std s gives about 10 log10(4 / s^2).
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _image_pair(x, y)
    with np.errstate(divide="ignore"):
        out = peak_signal_noise_ratio(a, b, data_range=2.0, reduction="none", dim=(1, 2, 3))
    return out.float()


def nearest_neighbour_distances(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Euclidean distance (N,) from each row of x (N, ...) to its nearest row of ``reference`` (M, ...).

    The memorisation check: samples much closer to the training set than held-out data is are copies.
    """
    if not (torch.is_tensor(x) and torch.is_tensor(reference)) or x.shape[1:] != reference.shape[1:]:
        raise ValueError(f"reference: expected tensors of matching trailing shape, got "
                         f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(reference, 'shape', ()))}")
    a, b = x.reshape(len(x), -1).double(), reference.reshape(len(reference), -1).double()
    return torch.cat([torch.cdist(a[i:i + 500], b).min(1).values for i in range(0, len(a), 500)]).float()
