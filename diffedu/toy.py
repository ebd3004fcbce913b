"""Exact answers to check everything against: Gaussian mixtures and 2D toy data (monograph §1, §3.3, §6.3).

If p_data = sum_k w_k N(mu_k, Sigma_k), then under x_t = alpha_t x0 + sigma_t eps every marginal
is again a mixture,

    p_t(x) = sum_k w_k N(x; alpha_t mu_k, C_k(t)),   C_k(t) = alpha_t^2 Sigma_k + sigma_t^2 I,

so log p_t, the score grad log p_t, the posterior mean E[x0 | x_t] (Tweedie, monograph §3.3),
E[eps | x_t] and the PF-ODE velocity are all closed-form. :meth:`GaussianMixture.denoiser`
wraps them as a model with the same contract as a trained :class:`diffedu.param.Denoiser`, so
every sampler, loss and likelihood routine can be run against the exact answer.

With ``labels`` (one class per component), the class-conditional p_t(x | c) and
p_t(c | x) are exact too (monograph §8).

The *flow map* Psi_{s->t} of the PF-ODE dx/dt = u_t(x) (monograph §11.1) has no closed form for a
mixture, but its velocity has, so :func:`flow_map` integrates it with scipy's adaptive solver at
tight tolerance: the teacher-free reference of chapter 11, with the exact consistency function
f(x, t) = Psi_{t->0}(x) (:func:`consistency_function`) and the exact average velocity
u(x, r, t) = (Psi_{t->r}(x) - x) / (r - t) (:func:`average_velocity`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from diffedu._checks import append_dims, check_data, check_finite, check_generator, check_int, check_positive, check_schedule, check_time
from diffedu.param import Prediction
from diffedu.schedules import Schedule

__all__ = ["GaussianMixture", "ExactDenoiser", "flow_map", "consistency_function", "average_velocity", "tilted_log_prob", "sample_tilted", "linear_gaussian_posterior",
           "eight_gaussians", "labelled_mixture", "gaussian",
           "empirical_mixture", "two_moons", "checkerboard", "swiss_roll", "spirals", "DATASETS", "sample_dataset"]


def _as_float64(x, name):
    try:
        return torch.as_tensor(x, dtype=torch.float64).detach().cpu()
    except Exception as e:  # pragma: no cover - message only
        raise TypeError(f"{name}: could not convert to a tensor ({e})") from None


class GaussianMixture:
    """p(x0) = sum_k w_k N(mu_k, Sigma_k) in any dimension D, with exact diffused quantities (monograph §3.3, §6.3).

    Parameters
    ----------
    means : (K, D) component means mu_k.
    covs : (K, D, D) symmetric positive semi-definite covariances Sigma_k, or
    stds : scalar, (K,) or (K, D) standard deviations (diagonal covariances) — give one of the two.
    weights : (K,) positive mixture weights w_k (normalised here); uniform by default.
    labels : (K,) integer class of each component, for class-conditional densities (monograph §8).
    """

    def __init__(self, means, covs=None, stds=None, weights=None, labels=None):
        means = _as_float64(means, "means")
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"means: expected shape (K, D) with K, D >= 1, got {tuple(means.shape)}")
        if not torch.isfinite(means).all():
            raise ValueError("means: contains NaN or inf")
        K, D = means.shape
        if (covs is None) == (stds is None):
            raise ValueError("covs, stds: give exactly one of covs (K, D, D) or stds (scalar, (K,) or (K, D))")
        if stds is not None:
            stds = _as_float64(stds, "stds")
            if stds.ndim == 0:
                stds = stds.expand(K, D)
            elif stds.ndim == 1 and stds.shape[0] == K:
                stds = stds[:, None].expand(K, D)
            elif stds.shape != (K, D):
                raise ValueError(f"stds: expected a scalar, shape ({K},) or ({K}, {D}), got {tuple(stds.shape)}")
            if (stds < 0).any() or not torch.isfinite(stds).all():
                raise ValueError("stds: expected finite non-negative standard deviations")
            self._evals = (stds**2).clone()
            self._evecs = None  # axis-aligned: eigenvectors are the identity
        else:
            covs = _as_float64(covs, "covs")
            if covs.shape != (K, D, D):
                raise ValueError(f"covs: expected shape ({K}, {D}, {D}), got {tuple(covs.shape)}")
            if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10):
                raise ValueError("covs: every covariance must be symmetric")
            evals, evecs = torch.linalg.eigh(covs)
            if (evals < -1e-10 * evals.abs().max().clamp_min(1)).any():
                raise ValueError("covs: every covariance must be positive semi-definite")
            self._evals, self._evecs = evals.clamp_min(0), evecs
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
        weights = _as_float64(weights, "weights")
        if weights.shape != (K,) or (weights <= 0).any() or not torch.isfinite(weights).all():
            raise ValueError(f"weights: expected {K} positive finite weights, got {weights.tolist()}")
        self.means = means
        self.weights = weights / weights.sum()
        if labels is not None:
            labels = torch.as_tensor(labels).detach().cpu()
            if labels.shape != (K,) or labels.is_floating_point() or (labels < 0).any():
                raise ValueError(f"labels: expected {K} non-negative integer class labels, got {labels}")
            labels = labels.long()
        self.labels = labels
        self._cache = {}

    # ---------------------------------------------------------------- basic properties
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def num_classes(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1

    @property
    def covs(self) -> torch.Tensor:
        """The (K, D, D) covariances Sigma_k."""
        if self._evecs is None:
            return torch.diag_embed(self._evals)
        return self._evecs @ torch.diag_embed(self._evals) @ self._evecs.transpose(1, 2)

    def mean(self) -> torch.Tensor:
        """E[x0] = sum_k w_k mu_k."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Cov[x0] = sum_k w_k (Sigma_k + mu_k mu_k^T) - E[x0] E[x0]^T."""
        m = self.mean()
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - torch.outer(m, m)

    def __repr__(self):
        return f"GaussianMixture(K={self.num_components}, D={self.dim}, classes={self.num_classes})"

    def _params(self, device, dtype):
        key = (str(device), dtype)
        if key not in self._cache:
            cast = lambda v: None if v is None else v.to(device=device, dtype=dtype)  # noqa: E731
            self._cache[key] = (cast(self.means), cast(self._evals), cast(self._evecs), torch.log(cast(self.weights)),
                                None if self.labels is None else self.labels.to(device))
        return self._cache[key]

    # ---------------------------------------------------------------- sampling
    def sample(self, n: int, generator: Optional[torch.Generator] = None, *, return_labels: bool = False,
               device=None, dtype=torch.float32):
        """Draw n samples x0 ~ p_data (and their class labels, or component indices if unlabelled)."""
        check_int(n, "n")
        check_generator(generator)
        gdev = generator.device if generator is not None else torch.device("cpu")
        comp = torch.multinomial(self.weights.to(gdev), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=gdev, dtype=torch.float64)
        comp_c = comp.cpu()
        scaled = z.cpu() * self._evals[comp_c].sqrt()
        if self._evecs is not None:
            scaled = torch.einsum("nde,ne->nd", self._evecs[comp_c], scaled)
        x = (self.means[comp_c] + scaled).to(device=device, dtype=dtype)
        if return_labels:
            lab = comp_c if self.labels is None else self.labels[comp_c]
            return x, lab.to(device)
        return x

    # ---------------------------------------------------------------- exact diffused quantities
    def _stats(self, x, t, schedule, cond=None):
        """Per-component pieces at (x, t): logits (B,K), projected residual z (B,K,D), variances (B,K,D)."""
        check_data(x, "x")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (B, {self.dim}) for this {self.dim}-D mixture, got {tuple(x.shape)}")
        t = check_time(t, x).to(x.dtype)
        if schedule is None:
            a = torch.ones_like(t)
            s = torch.zeros_like(t)
        else:
            check_schedule(schedule)
            a, s = schedule.alpha(t), schedule.sigma(t)
        means, evals, evecs, logw, labels = self._params(x.device, x.dtype)
        diff = x[:, None, :] - a[:, None, None] * means[None]
        z = diff if evecs is None else torch.einsum("bkd,kde->bke", diff, evecs)
        var = a[:, None, None] ** 2 * evals[None] + (s**2)[:, None, None]
        if (var <= 0).any():
            raise ValueError("t: the diffused covariance is singular here (sigma_t = 0 and a degenerate component); use t > 0")
        logits = logw[None] - 0.5 * ((z**2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi))
        if cond is not None:
            logits = logits + self._cond_mask(cond, x, labels)
        return logits, z, var, a, s, evals, evecs, means

    def _cond_mask(self, cond, x, labels):
        if labels is None:
            raise ValueError("cond: this mixture has no labels; build it with labels=... for class-conditional densities")
        cond = torch.as_tensor(cond, device=x.device)
        if cond.is_floating_point() or cond.shape != (x.shape[0],):
            raise ValueError(f"cond: expected integer class labels of shape ({x.shape[0]},), got {tuple(cond.shape)} {cond.dtype}")
        C = self.num_classes
        if (cond < 0).any() or (cond > C).any():
            raise ValueError(f"cond: labels must lie in [0, {C}] ({C} = unconditional), got range [{int(cond.min())}, {int(cond.max())}]")
        keep = (labels[None, :] == cond[:, None]) | (cond[:, None] == C)
        mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
        return mask.masked_fill(~keep, float("-inf"))

    def _unproject(self, v, evecs):
        return v if evecs is None else torch.einsum("bke,kde->bkd", v, evecs)

    def log_prob_t(self, x: torch.Tensor, t, schedule: Schedule, cond=None) -> torch.Tensor:
        """log p_t(x) (or log p_t(x | c) given ``cond``), exact (monograph §4.3, perturbation kernel)."""
        logits, *_ = self._stats(x, t, schedule, cond)
        out = torch.logsumexp(logits, -1)
        if cond is not None:  # renormalise by the class prior
            means, evals, evecs, logw, labels = self._params(x.device, x.dtype)
            out = out - torch.logsumexp(logw[None] + self._cond_mask(cond, x, labels), -1)
        return out

    def log_prob(self, x: torch.Tensor, cond=None) -> torch.Tensor:
        """log p_data(x) = log p_0(x), exact (needs non-degenerate covariances)."""
        return self.log_prob_t(x, 0.0, None, cond)

    def score_t(self, x: torch.Tensor, t, schedule: Schedule, cond=None) -> torch.Tensor:
        """grad_x log p_t(x) = -sum_k r_k(x) C_k^{-1}(x - alpha_t mu_k), exact (monograph §3.1, §4.2)."""
        logits, z, var, *_, evecs, _ = self._stats(x, t, schedule, cond)
        r = torch.softmax(logits, -1)
        return -(r[..., None] * self._unproject(z / var, evecs)).sum(1)

    def posterior_mean(self, x: torch.Tensor, t, schedule: Schedule, cond=None) -> torch.Tensor:
        """E[x0 | x_t = x] = sum_k r_k (mu_k + alpha_t Sigma_k C_k^{-1}(x - alpha_t mu_k)) (Tweedie, monograph §3.3)."""
        logits, z, var, a, s, evals, evecs, means = self._stats(x, t, schedule, cond)
        r = torch.softmax(logits, -1)
        comp = means[None] + self._unproject(a[:, None, None] * evals[None] * z / var, evecs)
        return (r[..., None] * comp).sum(1)

    def predict(self, x: torch.Tensor, t, schedule: Schedule, cond=None) -> Prediction:
        """The exact :class:`~diffedu.param.Prediction` (E[x0|x_t], E[eps|x_t]) at (x, t) (monograph §6.3)."""
        logits, z, var, a, s, evals, evecs, means = self._stats(x, t, schedule, cond)
        r = torch.softmax(logits, -1)[..., None]
        x0 = (r * (means[None] + self._unproject(a[:, None, None] * evals[None] * z / var, evecs))).sum(1)
        score = -(r * self._unproject(z / var, evecs)).sum(1)
        eps = -append_dims(s, x) * score
        t = check_time(t, x)
        # the exact score rides along as the raw kind: .score and .velocity stay finite at sigma_t = 0
        return Prediction(x0=x0, eps=eps, x_t=x, t=t, schedule=schedule, kind="score", raw=score)

    def eps_t(self, x, t, schedule, cond=None) -> torch.Tensor:
        """E[eps | x_t = x] = -sigma_t grad log p_t(x) (monograph §3.3)."""
        return self.predict(x, t, schedule, cond).eps

    def velocity_t(self, x, t, schedule, cond=None) -> torch.Tensor:
        """Marginal velocity u_t(x) = alpha'_t E[x0|x] + sigma'_t E[eps|x], the PF-ODE field (monograph §5.3, §4.4)."""
        return self.predict(x, t, schedule, cond).velocity

    def class_log_probs_t(self, x, t, schedule) -> torch.Tensor:
        """log p_t(c | x) for every class c, shape (B, C) — the exact noise-aware classifier (monograph §8.1)."""
        if self.labels is None:
            raise ValueError("this mixture has no labels")
        logits, *_ = self._stats(x, t, schedule)
        lab = self.labels.to(x.device)
        per_class = torch.stack([torch.logsumexp(logits[:, lab == c], -1) for c in range(self.num_classes)], -1)
        return per_class - torch.logsumexp(logits, -1, keepdim=True)

    def posterior_sample(self, x, t, schedule, generator=None) -> torch.Tensor:
        """One draw x0 ~ p(x0 | x_t = x): a Gaussian mixture with covariances Sigma_k - alpha^2 Sigma_k C_k^{-1} Sigma_k."""
        logits, z, var, a, s, evals, evecs, means = self._stats(x, t, schedule)
        r = torch.softmax(logits, -1)
        k = torch.multinomial(r.to(generator.device if generator else x.device), 1, generator=generator).squeeze(1).to(x.device)
        idx = torch.arange(len(x), device=x.device)
        mk = (means[None] + self._unproject(a[:, None, None] * evals[None] * z / var, evecs))[idx, k]
        pvar = (evals[None] * (s**2)[:, None, None] / var)[idx, k]
        noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device, dtype=x.dtype).to(x.device)
        noise = noise * pvar.sqrt()
        if evecs is not None:
            noise = torch.einsum("bde,be->bd", evecs[k], noise)
        return mk + noise

    def conditional(self, c: int) -> "GaussianMixture":
        """The class-conditional mixture p(x0 | c) as its own :class:`GaussianMixture`."""
        if self.labels is None:
            raise ValueError("this mixture has no labels")
        check_int(c, "c", 0)
        keep = self.labels == c
        if not keep.any():
            raise ValueError(f"c: no component has label {c}")
        if self._evecs is None:
            return GaussianMixture(self.means[keep], stds=self._evals[keep].sqrt(), weights=self.weights[keep])
        return GaussianMixture(self.means[keep], covs=self.covs[keep], weights=self.weights[keep])

    def denoiser(self, schedule: Schedule) -> "ExactDenoiser":
        """This mixture's exact denoiser under ``schedule``, usable wherever a trained model is (monograph §6.3)."""
        return ExactDenoiser(self, schedule)


class ExactDenoiser(nn.Module):
    """The Bayes-optimal denoiser of a :class:`GaussianMixture`: ``forward(x_t, t, cond=None) -> Prediction``.

    Same contract as :class:`diffedu.param.Denoiser`, so every sampler, guidance wrapper and
    likelihood routine accepts it. Its error is exactly zero, so the error of a sampler run on it
    is the solver's own discretisation error (monograph §9).
    """

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        super().__init__()
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture: expected a GaussianMixture, got {type(mixture).__name__}")
        check_schedule(schedule)
        self.mixture = mixture
        self.schedule = schedule

    def forward(self, x_t: torch.Tensor, t, cond=None) -> Prediction:
        return self.mixture.predict(x_t, t, self.schedule, cond)


# --------------------------------------------------- the exact flow map (monograph §11.1)
def _flow_times(v, x, name):
    """A scalar or (B,) time in [0, 1] as a float64 (B,) tensor on the CPU."""
    if torch.is_tensor(v):
        v = v.detach().to(torch.float64).cpu()
    return check_time(v, x.detach().to(torch.float64).cpu(), name).to(torch.float64)


def _exact_velocity(mixture, schedule, z, tau):
    """The mixture's PF-ODE velocity, finite at both ends: u = alpha' E[x0|x] + sigma' E[eps|x] (NaN at t = 0 for VP,
    where sigma'_0 = inf) with f(t) x - g(t)^2/2 score (:func:`diffedu.sde.pf_ode_velocity`; NaN where alpha = 0) as the fallback."""
    v = mixture.velocity_t(z, tau, schedule)
    bad = ~torch.isfinite(v)
    if bad.any():
        from diffedu.sde import pf_ode_velocity

        v = torch.where(bad, pf_ode_velocity(schedule, z, tau, mixture.score_t(z, tau, schedule)), v)
    return v


def _time_field(mixture, schedule, B, s, span):
    """dx/dlam = (t - s) u_tau(x) at tau = s + lam (t - s): the PF-ODE on each example's own clock."""
    def rhs(lam, y):
        z = torch.from_numpy(y).reshape(B, -1)
        tau = (s + lam * span).clamp(0.0, 1.0)
        return (span[:, None] * _exact_velocity(mixture, schedule, z, tau)).reshape(-1).numpy()
    return rhs


def flow_map(mixture: GaussianMixture, schedule: Schedule, x: torch.Tensor, s, t, *,
             rtol: float = 1e-10, atol: float = 1e-10) -> torch.Tensor:
    """Psi_{s->t}(x): where the exact PF-ODE dx/dtau = u_tau(x) carries x from time s to time t (monograph §11.1).

    ``s`` and ``t`` are floats or per-example (B,) tensors in [0, 1], either order (s > t runs
    towards the data, s < t towards the noise; s = t is the identity). Every example is put on
    its own clock lam in [0, 1], so one ``scipy.integrate.solve_ivp`` (DOP853, float64) solves the
    whole batch: tau = s + lam (t - s) and dx/dlam = (t - s) u_tau(x), with the exact mixture
    velocity :meth:`GaussianMixture.velocity_t` (finite at both ends, see ``_exact_velocity``). scipy controls the RMS error over all
    coordinates, so it is given rtol / sqrt(B) and atol / sqrt(B): each example's error is then
    below the tolerance asked for. ``x`` is (B, D), or (B, ...) with D entries per example; the
    output has x's shape, dtype and device. The semigroup Psi_{u->r} o Psi_{t->u} = Psi_{t->r}
    holds to the tolerance (tests/test_flow_map.py).
    """
    from scipy.integrate import solve_ivp

    _check_mixture(mixture, name="mixture")
    check_schedule(schedule)
    check_data(x, "x")
    if x[0].numel() != mixture.dim:
        raise ValueError(f"x: expected {mixture.dim} entries per example for this {mixture.dim}-D mixture, "
                         f"got shape {tuple(x.shape)}")
    rtol, atol = check_positive(rtol, "rtol"), check_positive(atol, "atol")
    s, t = _flow_times(s, x, "s"), _flow_times(t, x, "t")
    B = x.shape[0]
    y0 = x.detach().to(device="cpu", dtype=torch.float64).reshape(B, -1)
    span = t - s
    if not (span != 0).any():
        return x.clone()

    rhs = _time_field(mixture, schedule, B, s, span)
    per_example = math.sqrt(B)
    sol = solve_ivp(rhs, (0.0, 1.0), y0.reshape(-1).numpy(), method="DOP853", rtol=rtol / per_example,
                    atol=atol / per_example)
    if not sol.success:
        raise RuntimeError(f"flow_map: the ODE solver failed ({sol.message})")
    out = torch.from_numpy(sol.y[:, -1]).reshape(x.shape)
    return out.to(device=x.device, dtype=x.dtype)


def consistency_function(mixture: GaussianMixture, schedule: Schedule, x: torch.Tensor, t, **tol) -> torch.Tensor:
    """The exact consistency function f(x, t) = Psi_{t->0}(x): the data point the PF-ODE ends at (monograph §11.2).

    f(x, 0) = x (the boundary condition) and f(Psi_{s->t}(x), t) = f(x, s) for all s, t (the
    self-consistency a consistency model is trained to satisfy). ``tol``: ``rtol``, ``atol`` of :func:`flow_map`.
    """
    return flow_map(mixture, schedule, x, t, 0.0, **tol)


def average_velocity(mixture: GaussianMixture, schedule: Schedule, x: torch.Tensor, r, t, **tol) -> torch.Tensor:
    """The exact average velocity u(x, r, t) = (Psi_{t->r}(x) - x) / (r - t) of MeanFlow (monograph §11.5).

    The mean of the PF-ODE velocity along the exact trajectory from (x, t) to time r, so that
    one step x_r = x - (t - r) u(x, r, t) lands on Psi_{t->r}(x) exactly. Where r = t it is the
    instantaneous velocity u_t(x) (:meth:`GaussianMixture.velocity_t`), the limit. ``r``, ``t``:
    floats or (B,) tensors; ``tol``: ``rtol``, ``atol`` of :func:`flow_map`.
    """
    check_data(x, "x")
    r, t = _flow_times(r, x, "r"), _flow_times(t, x, "t")
    jump = flow_map(mixture, schedule, x, t, r, **tol)
    xd = x.detach().to(device="cpu", dtype=torch.float64)
    gap = append_dims(r - t, xd)
    same = append_dims(r == t, xd)
    v = _exact_velocity(mixture, schedule, xd.reshape(len(xd), -1), t).reshape(x.shape)
    out = torch.where(same, v, (jump.to(device="cpu", dtype=torch.float64) - xd) / torch.where(same, torch.ones_like(gap), gap))
    return out.to(device=x.device, dtype=x.dtype)


# --------------------------------------------------- exact answers for guidance (monograph §8)
def _check_mixture(mix, labelled=False, name="mix"):
    if not isinstance(mix, GaussianMixture):
        raise TypeError(f"{name}: expected a diffedu.toy.GaussianMixture, got {type(mix).__name__}")
    if labelled and mix.labels is None:
        raise ValueError(f"{name}: expected a labelled mixture (labels=...), e.g. toy.labelled_mixture()")
    return mix


def tilted_log_prob(mix: GaussianMixture, x: torch.Tensor, t, schedule: Schedule, c: torch.Tensor, w: float) -> torch.Tensor:
    """Unnormalised log of the tilted density (1 + w) log p_t(x | c) - w log p_t(x), shape (B,) (monograph §8.2).

    Its x-gradient is exactly the classifier-free guided score (:class:`diffedu.guidance.ClassifierFreeGuidance`
    with the exact denoiser); equivalently log p_t(x | c) + w log p_t(c | x) up to a constant in x.
    """
    _check_mixture(mix, labelled=True)
    check_data(x, "x")
    w = check_finite(w, "w")
    if not torch.is_tensor(c) or c.is_floating_point() or c.shape != (x.shape[0],):
        raise ValueError(f"c: expected integer class labels of shape ({x.shape[0]},), got "
                         f"{type(c).__name__ if not torch.is_tensor(c) else (tuple(c.shape), c.dtype)}")
    return (1 + w) * mix.log_prob_t(x, t, schedule, cond=c) - w * mix.log_prob_t(x, t, schedule)


def sample_tilted(mix: GaussianMixture, c: int, w: float, n: int, generator=None, dtype=torch.float64) -> torch.Tensor:
    """Exact samples of the t = 0 tilted density p(x | c)^(1+w) / p(x)^w, for w >= 0 (monograph §8.2).

    p(x|c)^(1+w) / p(x)^w = p(x|c) (p(c|x) / p(c))^w, and p(c|x)^w <= 1, so rejection sampling from
    p(x|c) with acceptance probability p(c|x)^w is exact. This is the density CFG *would* sample if
    the tilted family were the marginals of one diffusion; it is not (the chapter compares the two).
    """
    _check_mixture(mix, labelled=True)
    w = check_finite(w, "w")
    if w < 0:
        raise ValueError(f"w: sample_tilted needs w >= 0 (bounded acceptance ratio), got {w}")
    if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < mix.num_classes:
        raise ValueError(f"c: expected a class label in [0, {mix.num_classes}), got {c!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    cond_mix, out, have = mix.conditional(c), [], 0
    zero = None
    for _ in range(1000):
        x = cond_mix.sample(max(2 * n, 256), generator=generator, dtype=torch.float64)
        if zero is None:
            zero = torch.zeros(len(x), dtype=torch.float64)
        # log p_0(c | x) from the exact classifier at t = 0 (any schedule has alpha_0 = 1, sigma_0 = 0)
        logp = mix.class_log_probs_t(x, zero, None)[:, c]
        gdev = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(len(x), generator=generator, device=gdev, dtype=torch.float64).cpu()
        keep = x[u.log() < w * logp]
        out.append(keep)
        have += len(keep)
        if have >= n:
            return torch.cat(out)[:n].to(dtype)
    raise RuntimeError(f"sample_tilted: acceptance rate too low for w={w} (accepted {have} of the {n} requested)")


def linear_gaussian_posterior(prior: GaussianMixture, A: torch.Tensor, y: torch.Tensor, noise_std: float) -> GaussianMixture:
    """The exact posterior p(x0 | y) of a Gaussian-mixture prior under y = A x0 + noise_std * n, n ~ N(0, I) (monograph §8.3).

    Bayes per component (the Kalman update): with S_k = A Sigma_k A^T + noise_std^2 I and
    K_k = Sigma_k A^T S_k^{-1}, the posterior is sum_k w'_k N(mu_k + K_k (y - A mu_k), Sigma_k - K_k A Sigma_k)
    with w'_k proportional to w_k N(y; A mu_k, S_k). ``A`` is (M, D) (a row selection is inpainting,
    the identity is denoising), ``y`` is (M,). The training-free guidance of :mod:`diffedu.guidance` (DPS) is
    checked against it.
    """
    _check_mixture(prior, name="prior")
    if not torch.is_tensor(A) or A.ndim != 2 or A.shape[1] != prior.dim:
        raise ValueError(f"A: expected a (M, {prior.dim}) measurement matrix, got "
                         f"{tuple(A.shape) if torch.is_tensor(A) else type(A).__name__}")
    A = A.detach().to(torch.float64).cpu()
    if not torch.is_tensor(y) or y.reshape(-1).shape != (A.shape[0],):
        raise ValueError(f"y: expected a measurement of shape ({A.shape[0]},), got "
                         f"{tuple(y.shape) if torch.is_tensor(y) else type(y).__name__}")
    noise_std = check_positive(noise_std, "noise_std")
    y = y.detach().to(torch.float64).cpu().reshape(-1)
    mu, Sig = prior.means, prior.covs
    S = A @ Sig @ A.T + noise_std**2 * torch.eye(A.shape[0], dtype=torch.float64)       # (K, M, M)
    gain = torch.linalg.solve(S, A @ Sig).transpose(1, 2)                                 # K_k = Sigma_k A^T S_k^{-1}
    resid = y - mu @ A.T                                                                  # (K, M)
    means = mu + (gain @ resid[..., None])[..., 0]
    covs = Sig - gain @ A @ Sig
    covs = 0.5 * (covs + covs.transpose(1, 2))
    log_ev = torch.distributions.MultivariateNormal(torch.zeros_like(y), covariance_matrix=S).log_prob(resid)
    return GaussianMixture(means, covs=covs, weights=torch.softmax(torch.log(prior.weights) + log_ev, 0).clamp_min(1e-300),
                           labels=prior.labels)


# -------------------------------------------------------------------------------------- data sets
def eight_gaussians(radius: float = 4.0, std: float = 0.5) -> GaussianMixture:
    """Eight equal Gaussians on a ring of the given radius — the standard 2D benchmark density."""
    radius, std = check_positive(radius, "radius"), check_positive(std, "std")
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return GaussianMixture(radius * torch.stack([ang.cos(), ang.sin()], -1), stds=std)


def labelled_mixture(num_classes: int = 3, per_class: int = 2, radius: float = 3.0, std: float = 0.4) -> GaussianMixture:
    """A labelled 2D mixture for guidance: ``num_classes * per_class`` Gaussians on a ring, interleaved classes, with
    slightly anisotropic covariances so that conditional and unconditional scores differ visibly (monograph §8)."""
    check_int(num_classes, "num_classes")
    check_int(per_class, "per_class")
    radius, std = check_positive(radius, "radius"), check_positive(std, "std")
    K = num_classes * per_class
    ang = torch.arange(K, dtype=torch.float64) * (2 * math.pi / K)
    means = radius * torch.stack([ang.cos(), ang.sin()], -1)
    rot = torch.stack([torch.stack([ang.cos(), -ang.sin()], -1), torch.stack([ang.sin(), ang.cos()], -1)], -2)
    base = torch.diag(torch.tensor([std**2, (0.5 * std) ** 2], dtype=torch.float64))
    covs = rot @ base @ rot.transpose(1, 2)
    labels = torch.arange(K) % num_classes
    return GaussianMixture(means, covs=covs, labels=labels)


def gaussian(mean, cov) -> GaussianMixture:
    """A single Gaussian N(mean, cov) as a one-component mixture (the simplest exact oracle)."""
    mean = _as_float64(mean, "mean")
    return GaussianMixture(mean[None], covs=_as_float64(cov, "cov")[None])


def empirical_mixture(x: torch.Tensor, std: float = 0.0) -> GaussianMixture:
    """The empirical distribution of a data set (optionally smoothed by N(0, std^2 I)) as a mixture.

    Its exact denoiser is the "memorising" optimum that a model trained to zero loss on x reaches.
    """
    check_data(x, "x")
    std = check_positive(std, "std", strict=False)
    return GaussianMixture(x.reshape(len(x), -1).double(), stds=std)


def _randn(n, d, generator):
    dev = generator.device if generator is not None else "cpu"
    return torch.randn(n, d, generator=generator, device=dev).cpu()


def _rand(n, generator):
    dev = generator.device if generator is not None else "cpu"
    return torch.rand(n, generator=generator, device=dev).cpu()


def _check_n(n, generator=None, **positives):
    check_int(n, "n")
    check_generator(generator)
    for name, value in positives.items():
        check_positive(value, name, strict=False)


def two_moons(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.05, scale: float = 2.0) -> torch.Tensor:
    """Two interleaved half circles (scaled and centred), shape (n, 2)."""
    _check_n(n, generator, noise=noise)
    check_positive(scale, "scale")
    n1 = n // 2
    th = math.pi * _rand(n, generator)
    upper = torch.stack([th.cos(), th.sin()], -1)
    lower = torch.stack([1 - th.cos(), 0.5 - th.sin()], -1)
    x = torch.cat([upper[:n1], lower[n1:]])
    x = x + noise * _randn(n, 2, generator)
    return scale * (x - torch.tensor([0.5, 0.25]))


def checkerboard(n: int, generator: Optional[torch.Generator] = None, size: float = 4.0) -> torch.Tensor:
    """Uniform on the dark squares of a 4x4 checkerboard on [-size, size]^2, shape (n, 2)."""
    _check_n(n, generator)
    check_positive(size, "size")
    x1 = _rand(n, generator) * 4 - 2
    x2_ = _rand(n, generator) - (torch.randint(0, 2, (n,), generator=generator,
                                                device=generator.device if generator is not None else "cpu").cpu() * 2.0)
    x2 = x2_ + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], -1) * (size / 2)


def swiss_roll(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.1) -> torch.Tensor:
    """A 2D swiss roll (scaled to roughly [-4, 4]^2), shape (n, 2)."""
    _check_n(n, generator, noise=noise)
    th = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
    x = torch.stack([th * th.cos(), th * th.sin()], -1) / 3.5
    return x + noise * _randn(n, 2, generator)


def spirals(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.1, arms: int = 2) -> torch.Tensor:
    """``arms`` interleaved Archimedean spirals, shape (n, 2)."""
    _check_n(n, generator, noise=noise)
    check_int(arms, "arms")
    r = _rand(n, generator).sqrt()
    arm = torch.randint(0, arms, (n,), generator=generator, device=generator.device if generator is not None else "cpu").cpu()
    th = 3 * math.pi * r + arm * (2 * math.pi / arms)
    x = 4 * r[:, None] * torch.stack([th.cos(), th.sin()], -1)
    return x + noise * _randn(n, 2, generator)


DATASETS = {
    "eight_gaussians": lambda n, g: eight_gaussians().sample(n, g),
    "two_moons": two_moons,
    "checkerboard": checkerboard,
    "swiss_roll": swiss_roll,
    "spirals": spirals,
    "labelled_mixture": lambda n, g: labelled_mixture().sample(n, g),
}


def sample_dataset(name: str, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """n samples (float32, CPU) of a named 2D toy data set: one of :data:`DATASETS`."""
    if name not in DATASETS:
        raise ValueError(f"name: unknown data set {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name](n, generator).float()
