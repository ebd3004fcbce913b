"""Noise schedules: how noisy is time t?  (monograph §4.3, §6.2, Table 6.1; appendix D.6)

A schedule fixes the forward corruption ``x_t = alpha_t x_0 + sigma_t eps`` for continuous
t in [0, 1], **t = 0 data, t = 1 noise**. Every schedule is a small, stateless object that
returns alpha_t, sigma_t, their time derivatives, and three names for "how noisy", each with
its inverse (one convention per name; every module uses these methods, none re-derives them):

==========================  =================================  ==========================================
method (inverse)            quantity                           where it is the natural variable
==========================  =================================  ==========================================
``log_snr``                 log(alpha_t^2 / sigma_t^2)         Kingma et al. 2021's lambda: losses, ELBO
(``t_from_log_snr``)        (the full log-SNR)                 weights (monograph §2.2, §6.2)
``half_log_snr``            log(alpha_t / sigma_t)             Lu et al. 2022's lambda: DPM-Solver(++),
(``t_from_half_log_snr``)   = log_snr / 2                      DEIS, log-SNR grids (monograph §9.2, §9.4)
``sigma_bar``               sigma_t / alpha_t                  EDM's noise level sigma: Heun, Karras
(``t_from_sigma_bar``)      = exp(-half_log_snr)               grids, preconditioning (§6.4, §9.2, D.6)
==========================  =================================  ==========================================

Each subclass gives one closed form of the log-SNR and its inverse; the half log-SNR pair is
that pair rescaled by 2, which is exact in floating point (half_log_snr(t) == log_snr(t) / 2 to
the last bit). sigma_bar is +inf where alpha_t = 0 and 0 at the data where sigma_t = 0.
Everything follows the device and dtype of ``t``.

The SDE coefficients follow from (alpha_t, sigma_t) for *any* schedule (monograph §4.3):
``f(t) = d log alpha_t / dt`` and ``g(t)^2 = d sigma_t^2/dt - 2 f(t) sigma_t^2``; they live in
:mod:`diffedu.sde`, so VP, VE and sub-VP are instances here, not separate SDE classes.

Integer DDPM indices exist only inside :class:`DiscreteSchedule`.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from diffedu._checks import check_positive

__all__ = [
    "Schedule",
    "VPLinear",
    "VPCosine",
    "SubVP",
    "VEGeometric",
    "EDM",
    "RectifiedFlow",
    "DiscreteSchedule",
    "ddpm_linear_betas",
    "ddpm_cosine_betas",
]


def _check_t(t) -> torch.Tensor:
    if not torch.is_tensor(t):
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            t = torch.tensor(float(t), dtype=torch.get_default_dtype())
        else:
            raise TypeError(f"t: expected a float or a floating tensor in [0, 1], got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"t: expected a floating tensor in [0, 1] (t = 0 data, t = 1 noise), got dtype {t.dtype}")
    if torch.isnan(t).any():
        raise ValueError("t: contains NaN")
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise ValueError(f"t: must lie in [0, 1], got range [{t.min().item():.4g}, {t.max().item():.4g}]")
    return t


def _check_level(v, name: str) -> torch.Tensor:
    """A noise level (log-SNR, half log-SNR or sigma_bar) as a tensor without NaN."""
    if not torch.is_tensor(v):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name}: expected a float or a floating tensor, got {type(v).__name__}")
        v = torch.tensor(float(v), dtype=torch.get_default_dtype())
    if torch.isnan(v).any():
        raise ValueError(f"{name}: contains NaN")
    return v


class Schedule:
    """Base class of a continuous-time schedule (alpha_t, sigma_t) on t in [0, 1] (monograph §6.2).

    Subclasses implement ``_alpha, _sigma, _d_alpha, _d_sigma`` (closed forms, elementwise on a
    tensor) and, where it exists, ``_t_from_log_snr``; ``_log_snr`` and ``_t_from_sigma_bar`` where
    a closed form beats the generic one. The public methods validate their input.
    ``variance_preserving`` is True when alpha_t^2 + sigma_t^2 = 1.
    """

    variance_preserving: bool = False

    # --- closed forms (override) -------------------------------------------------------
    def _alpha(self, t):
        raise NotImplementedError

    def _sigma(self, t):
        raise NotImplementedError

    def _d_alpha(self, t):
        raise NotImplementedError

    def _d_sigma(self, t):
        raise NotImplementedError

    def _d_sigma2(self, t):
        return 2 * self._sigma(t) * self._d_sigma(t)

    def _log_snr(self, t):
        return 2 * (torch.log(self._alpha(t)) - torch.log(self._sigma(t)))

    def _t_from_log_snr(self, lam):
        raise NotImplementedError(f"{type(self).__name__} has no closed-form inverse of the log-SNR")

    def _sigma_bar(self, t):
        return self._sigma(t) / self._alpha(t)

    def _t_from_sigma_bar(self, sb):
        # generic: through the half log-SNR -log(sigma_bar); sigma_bar = 0 (the data) is t = 0 exactly
        t = self._t_from_log_snr(-2 * torch.log(sb.clamp_min(1e-300)))
        return torch.where(sb == 0, torch.zeros_like(t), t)

    # --- public, validated -------------------------------------------------------------
    def alpha(self, t):
        """Signal scale alpha_t of x_t = alpha_t x0 + sigma_t eps (monograph §6.2)."""
        return self._alpha(_check_t(t))

    def sigma(self, t):
        """Noise scale sigma_t of x_t = alpha_t x0 + sigma_t eps (monograph §6.2)."""
        return self._sigma(_check_t(t))

    def d_alpha(self, t):
        """Time derivative alpha'_t = d alpha_t / dt (closed form)."""
        return self._d_alpha(_check_t(t))

    def d_sigma(self, t):
        """Time derivative sigma'_t = d sigma_t / dt (closed form)."""
        return self._d_sigma(_check_t(t))

    def d_sigma2(self, t):
        """d(sigma_t^2)/dt, finite where sigma_t = 0 (used by g(t)^2, monograph §4.3)."""
        return self._d_sigma2(_check_t(t))

    def log_snr(self, t):
        """Full log signal-to-noise ratio log(alpha_t^2 / sigma_t^2) (Kingma et al. 2021's lambda), decreasing in t (monograph §2.2, §6.2)."""
        return self._log_snr(_check_t(t))

    def t_from_log_snr(self, lam):
        """Inverse of :meth:`log_snr`: the t in [0, 1] with log(alpha_t^2 / sigma_t^2) = ``lam`` (clamped to [0, 1])."""
        return self._t_from_log_snr(_check_level(lam, "lam")).clamp(0.0, 1.0)

    def half_log_snr(self, t):
        """Half log-SNR log(alpha_t / sigma_t) = log_snr / 2 (Lu et al. 2022's lambda; monograph §9.2, §9.4).

        +inf at the data where sigma_t = 0, -inf where alpha_t = 0. Exactly ``log_snr(t) / 2``.
        """
        return self._log_snr(_check_t(t)) / 2

    def t_from_half_log_snr(self, lam):
        """Inverse of :meth:`half_log_snr`: the t in [0, 1] with log(alpha_t / sigma_t) = ``lam`` (clamped to [0, 1])."""
        return self._t_from_log_snr(2 * _check_level(lam, "lam")).clamp(0.0, 1.0)

    def sigma_bar(self, t):
        """Noise-to-signal ratio sigma_bar_t = sigma_t / alpha_t = exp(-half_log_snr): EDM's sigma (monograph §6.4, §9.2).

        The PF-ODE in (x / alpha_t, sigma_bar) is d(x / alpha) / d sigma_bar = E[eps | x_t] (monograph §9.2).
        0 at the data where sigma_t = 0, +inf where alpha_t = 0.
        """
        return self._sigma_bar(_check_t(t))

    def t_from_sigma_bar(self, sigma_bar):
        """Inverse of :meth:`sigma_bar`: the t in [0, 1] with sigma_t / alpha_t = ``sigma_bar`` >= 0; 0 maps to t = 0."""
        sb = _check_level(sigma_bar, "sigma_bar")
        if (sb < 0).any():
            raise ValueError("sigma_bar: expected non-negative noise-to-signal ratios sigma_t / alpha_t")
        return self._t_from_sigma_bar(sb).clamp(0.0, 1.0)

    def coefficients(self, t):
        """(alpha_t, sigma_t, alpha'_t, sigma'_t) at once, like a scheduler output (one validation, shared work)."""
        return self._coefficients(_check_t(t))

    def _coefficients(self, t):
        return self._alpha(t), self._sigma(t), self._d_alpha(t), self._d_sigma(t)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class _VPBase(Schedule):
    """Variance-preserving: sigma_t = sqrt(1 - alpha_t^2); subclasses give log alpha_t."""

    variance_preserving = True

    def _log_alpha(self, t):
        raise NotImplementedError

    def _d_log_alpha(self, t):
        raise NotImplementedError

    def _alpha(self, t):
        return torch.exp(self._log_alpha(t))

    @staticmethod
    def _sigma_from_log_alpha(la):
        # sigma = sqrt(1 - alpha^2) with 1 - alpha^2 = -expm1(2 log alpha); abs() turns the -0.0
        # of -expm1(0) into +0.0, so sigma'(0) = -alpha alpha' / sigma is +inf, not -inf
        return torch.sqrt((-torch.expm1(2 * la)).clamp_min(0).abs())

    def _sigma(self, t):
        return self._sigma_from_log_alpha(self._log_alpha(t))

    def _d_alpha(self, t):
        return self._alpha(t) * self._d_log_alpha(t)

    def _d_sigma(self, t):
        # sigma' = -alpha alpha' / sigma  (infinite at t = 0 where sigma = 0)
        return -self._alpha(t) * self._d_alpha(t) / self._sigma(t)

    def _d_sigma2(self, t):
        return -2 * self._alpha(t) * self._d_alpha(t)

    def _log_alpha_and_derivative(self, t):
        return self._log_alpha(t), self._d_log_alpha(t)

    def _coefficients(self, t):
        # the four from log alpha and its derivative, each computed once (same formulas as above);
        # a subclass that redefines sigma (SubVP) is not VP and takes the generic path
        if not self.variance_preserving:
            return super()._coefficients(t)
        la, dla = self._log_alpha_and_derivative(t)
        a = torch.exp(la)
        s = self._sigma_from_log_alpha(la)
        # a subclass with its own closed-form alpha' (VPCosine, where alpha = 0 and (log alpha)' = -inf
        # at t = 1) uses it, so coefficients() equals the separate methods at the endpoints
        da = self._d_alpha(t) if type(self)._d_alpha is not _VPBase._d_alpha else a * dla
        return a, s, da, -a * da / s

    def _log_snr(self, t):
        la = self._log_alpha(t)
        return 2 * la - torch.log((-torch.expm1(2 * la)).clamp_min(0))

    def _sigma_bar(self, t):
        if not self.variance_preserving:  # SubVP redefines sigma
            return super()._sigma_bar(t)
        # sigma^2 / alpha^2 = 1 / alpha^2 - 1 = expm1(-2 log alpha): one log-alpha pass, no cancellation near t = 0
        return torch.sqrt(torch.expm1(-2 * self._log_alpha(t)).clamp_min(0))

    @staticmethod
    def _log_alpha_from_log_snr(lam):
        # alpha^2 = sigmoid(lam) for a VP schedule
        return -0.5 * F.softplus(-lam)


class VPLinear(_VPBase):
    """VP schedule with linear beta(t) = beta_min + t (beta_max - beta_min) (Score SDE, monograph §4.3).

    log alpha_t = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2. Defaults are Score SDE's
    (0.1, 20), the continuous limit of DDPM's linear 1e-4..0.02 over 1000 steps.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = check_positive(beta_min, "beta_min")
        self.beta_max = check_positive(beta_max, "beta_max")
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max: expected beta_max >= beta_min = {beta_min}, got {beta_max}")

    def beta(self, t):
        """beta(t) = g(t)^2 of the VP SDE dx = -beta/2 x dt + sqrt(beta) dw (monograph §4.3)."""
        return self.beta_min + _check_t(t) * (self.beta_max - self.beta_min)

    def _log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _d_log_alpha(self, t):
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

    def _t_from_log_alpha(self, log_alpha):
        # solve a t^2 + b t - c = 0 for c = -log alpha >= 0 (stable root)
        c = -log_alpha
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        return 2 * c / (b + torch.sqrt(b * b + 4 * a * c))

    def _t_from_log_snr(self, lam):
        return self._t_from_log_alpha(self._log_alpha_from_log_snr(lam))


class VPCosine(_VPBase):
    """Cosine VP schedule of improved DDPM: alpha_t^2 = cos^2(pi/2 (t+s)/(1+s)) / cos^2(pi/2 s/(1+s)).

    monograph §2.2 (improved DDPM) and §6.2. alpha_1 = 0, so lambda_1 = -inf; conversions that
    divide by alpha_t are ill-posed exactly at t = 1.
    """

    def __init__(self, s: float = 0.008):
        self.s = check_positive(s, "s", strict=False, upper=1.0)
        self._c0 = math.log(math.cos(math.pi / 2 * self.s / (1 + self.s)))
        self._tan0 = math.tan(math.pi / 2 * self.s / (1 + self.s))

    def _theta(self, t):
        return math.pi / 2 * (t + self.s) / (1 + self.s)

    def _ratio(self, t):
        # alpha_t = cos(theta_0 + d) / cos(theta_0) = cos d - tan(theta_0) sin d with d = pi/2 t/(1+s):
        # exactly 1 at t = 0 in any precision (the quotient of two rounded cosines is not)
        d = math.pi / 2 * t / (1 + self.s)
        return (torch.cos(d) - self._tan0 * torch.sin(d)).clamp_min(0)

    def _log_alpha(self, t):
        return torch.log(self._ratio(t))

    def _d_log_alpha(self, t):
        return -torch.tan(self._theta(t)) * math.pi / 2 / (1 + self.s)

    def _d_alpha(self, t):
        # alpha'_t = -k sin(theta_0 + d) / cos(theta_0) = -k (sin d + tan(theta_0) cos d), k = pi/2/(1+s)
        d = math.pi / 2 * t / (1 + self.s)
        return -(torch.sin(d) + self._tan0 * torch.cos(d)) * (math.pi / 2 / (1 + self.s))

    def _t_from_log_snr(self, lam):
        # cos(theta) = u = alpha cos(theta_0); atan2(sqrt(1 - u^2), u) with 1 - u^2 = -expm1(2 log u)
        # stays accurate near t = 0, where arccos(u) loses half the digits.
        log_u = self._log_alpha_from_log_snr(lam) + self._c0
        theta = torch.atan2(torch.sqrt((-torch.expm1(2 * log_u)).clamp_min(0)), torch.exp(log_u))
        return theta * 2 / math.pi * (1 + self.s) - self.s


class SubVP(VPLinear):
    """sub-VP schedule of Score SDE: alpha_t as in :class:`VPLinear`, sigma_t = 1 - alpha_t^2 (monograph §4.3).

    Its SDE has the same drift as VP and a smaller diffusion g(t)^2 = beta(t)(1 - alpha_t^4);
    here it comes out of the generic formula in :mod:`diffedu.sde`.
    """

    variance_preserving = False

    def _sigma(self, t):
        return -torch.expm1(2 * self._log_alpha(t))

    def _d_sigma(self, t):
        return -2 * self._alpha(t) * self._d_alpha(t)

    def _d_sigma2(self, t):
        return 2 * self._sigma(t) * self._d_sigma(t)

    def _log_snr(self, t):
        la = self._log_alpha(t)
        return 2 * la - 2 * torch.log((-torch.expm1(2 * la)).clamp_min(0))

    def _t_from_log_snr(self, lam):
        # alpha / (1 - alpha^2) = e^{lam/2}  ->  alpha^2 + q alpha - 1 = 0 with q = e^{-lam/2}: alpha = 2 / (q + sqrt(q^2 + 4)),
        # finite for every lam (lam = +inf, the data: q = 0, alpha = 1, t = 0)
        q = torch.exp(-lam / 2)
        return self._t_from_log_alpha(math.log(2.0) - torch.log(q + torch.sqrt(q * q + 4)))


class VEGeometric(Schedule):
    """Variance-exploding schedule: alpha_t = 1, sigma_t = sigma_min (sigma_max / sigma_min)^t (NCSN/Score SDE, monograph §3.4, §4.3)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min = check_positive(sigma_min, "sigma_min")
        self.sigma_max = check_positive(sigma_max, "sigma_max")
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max: expected sigma_max > sigma_min = {sigma_min}, got {sigma_max}")
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _alpha(self, t):
        return 1 + 0 * t  # keeps the autograd graph for derivative checks

    def _sigma(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _d_alpha(self, t):
        return torch.zeros_like(t)

    def _d_sigma(self, t):
        return self._sigma(t) * self._log_ratio

    def _log_snr(self, t):
        return -2 * (math.log(self.sigma_min) + t * self._log_ratio)

    def _t_from_log_snr(self, lam):
        return (-lam / 2 - math.log(self.sigma_min)) / self._log_ratio

    def _t_from_sigma_bar(self, sb):
        return torch.log(sb / self.sigma_min) / self._log_ratio  # alpha = 1: sigma_bar = sigma


class EDM(Schedule):
    """EDM schedule (Karras et al. 2022): alpha_t = 1, sigma_t = sigma_max * t (monograph §6.4, appendix D.6).

    EDM's own time is sigma itself; here it is rescaled to t in [0, 1] so that t = 0 is data
    and t = 1 is sigma_max. EDM's rho-spaced grid lives in :mod:`diffedu.samplers`.
    """

    def __init__(self, sigma_max: float = 80.0, sigma_data: float = 0.5):
        self.sigma_max = check_positive(sigma_max, "sigma_max")
        self.sigma_data = check_positive(sigma_data, "sigma_data")

    def _alpha(self, t):
        return 1 + 0 * t  # keeps the autograd graph for derivative checks

    def _sigma(self, t):
        return self.sigma_max * t

    def _d_alpha(self, t):
        return torch.zeros_like(t)

    def _d_sigma(self, t):
        return torch.full_like(t, self.sigma_max)

    def _log_snr(self, t):
        return -2 * torch.log(self.sigma_max * t)

    def _t_from_log_snr(self, lam):
        return torch.exp(-lam / 2) / self.sigma_max

    def _t_from_sigma_bar(self, sb):
        return sb / self.sigma_max  # alpha = 1: sigma_bar = sigma = sigma_max t


class RectifiedFlow(Schedule):
    """Rectified flow / linear interpolant: alpha_t = 1 - t, sigma_t = t (monograph §5.3).

    Flow-matching papers often run time the other way (t = 1 data); here t = 0 is data.
    """

    def _alpha(self, t):
        return 1 - t

    def _sigma(self, t):
        return t.clone()

    def _d_alpha(self, t):
        return -torch.ones_like(t)

    def _d_sigma(self, t):
        return 1 + 0 * t  # keeps the autograd graph for derivative checks

    def _log_snr(self, t):
        return 2 * (torch.log1p(-t) - torch.log(t))

    def _t_from_log_snr(self, lam):
        return torch.sigmoid(-lam / 2)

    def _t_from_sigma_bar(self, sb):
        return 1 / (1 + 1 / sb)  # sigma_bar = t / (1 - t); 0 -> 0 and inf -> 1 without 0/0


# ------------------------------------------------------------------------------------------
# Discrete DDPM adapter
# ------------------------------------------------------------------------------------------

def ddpm_linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear beta table beta_n, n = 0..N-1 (Ho et al. 2020; monograph §2.2), float64."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: expected a positive int, got {num_steps!r}")
    check_positive(beta_start, "beta_start", upper=1.0)
    check_positive(beta_end, "beta_end", upper=1.0)
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def ddpm_cosine_betas(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved-DDPM cosine beta table (Nichol & Dhariwal 2021; monograph §2.2), clipped at ``max_beta``."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: expected a positive int, got {num_steps!r}")
    check_positive(max_beta, "max_beta", upper=1.0 + 1e-12)
    n = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos((n / num_steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


class DiscreteSchedule(_VPBase):
    """Adapter from a discrete DDPM table to continuous time (monograph §2.2 -> §4.3).

    Step n in {0, ..., N-1} (with alpha_bar_n = prod_{i<=n} (1 - beta_i)) sits at
    t_n = (n + 1) / N, and t = 0 is the clean data (alpha = 1). Between knots log alpha_t is
    linear in t, as in DPM-Solver's discrete wrapper, so alpha_t and its derivative exist at every t.
    Integer timesteps exist only here: :meth:`t_to_timestep`, :meth:`timestep_to_t`.
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas: expected a non-empty 1-D table, got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            raise ValueError("betas: every beta_n must lie in the open interval (0, 1)")
        self.num_steps = betas.numel()
        self._betas = betas
        self._alphas_cumprod = torch.cumprod(1 - betas, 0)
        la = 0.5 * torch.log(self._alphas_cumprod)
        self._knots_t = torch.linspace(0, 1, self.num_steps + 1, dtype=torch.float64)
        self._knots_la = torch.cat([torch.zeros(1, dtype=torch.float64), la])

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        """The standard DDPM linear table (1e-4..0.02 over 1000 steps)."""
        return cls(ddpm_linear_betas(num_steps, beta_start, beta_end))

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008):
        """The improved-DDPM cosine table."""
        return cls(ddpm_cosine_betas(num_steps, s))

    @property
    def betas(self) -> torch.Tensor:
        """The beta table (float64, CPU)."""
        return self._betas.clone()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_n = prod_{i<=n}(1 - beta_i), n = 0..N-1 (float64, CPU) — the DDPM table."""
        return self._alphas_cumprod.clone()

    def timestep_to_t(self, n) -> torch.Tensor:
        """Continuous time t_n = (n + 1) / N of (possibly fractional) DDPM step n in [-1, N-1]."""
        n = torch.as_tensor(n, dtype=torch.float64) if not torch.is_tensor(n) else n.to(torch.float64)
        if (n < -1).any() or (n > self.num_steps - 1).any():
            raise ValueError(f"n: DDPM steps must lie in [-1, {self.num_steps - 1}]")
        return (n + 1) / self.num_steps

    def t_to_timestep(self, t) -> torch.Tensor:
        """Fractional DDPM step n = N t - 1 of continuous time t (the inverse of :meth:`timestep_to_t`)."""
        return _check_t(t) * self.num_steps - 1

    def _interp(self, t):
        kt = self._knots_t.to(device=t.device, dtype=t.dtype)
        kl = self._knots_la.to(device=t.device, dtype=t.dtype)
        idx = torch.clamp(torch.searchsorted(kt, t.detach().contiguous(), right=True) - 1, 0, self.num_steps - 1)
        t0, t1 = kt[idx], kt[idx + 1]
        l0, l1 = kl[idx], kl[idx + 1]
        slope = (l1 - l0) / (t1 - t0)
        return l0 + slope * (t - t0), slope

    def _log_alpha(self, t):
        return self._interp(t)[0]

    def _log_alpha_and_derivative(self, t):
        return self._interp(t)

    def _d_log_alpha(self, t):
        return self._interp(t)[1]

    def _t_from_log_snr(self, lam):
        target = self._log_alpha_from_log_snr(lam)
        kt = self._knots_t.to(device=lam.device, dtype=lam.dtype)
        kl = self._knots_la.to(device=lam.device, dtype=lam.dtype)
        # log alpha decreases in t: search on the negated, increasing array
        neg = -kl
        idx = torch.clamp(torch.searchsorted(neg, (-target).contiguous(), right=True) - 1, 0, self.num_steps - 1)
        l0, l1, t0, t1 = kl[idx], kl[idx + 1], kt[idx], kt[idx + 1]
        return t0 + (target - l0) / (l1 - l0) * (t1 - t0)
