"""How do we steer at sampling time? Classifier guidance, classifier-free guidance, training-free (DPS) guidance (monograph §8.1-8.3).

Every guide here is a *wrapper that keeps the model contract*: ``guide(x_t, t, cond) -> Prediction``
with ``guide.schedule``, so every sampler of :mod:`diffedu.samplers` accepts it unchanged. All
three change the score by a term and then re-express it as (x0, eps) (monograph Table 6.1):

    classifier guidance   s_w(x, t | c) = grad log p_t(x) + w grad log p_t(c | x)                     (§8.1)
    classifier-free       s_w(x, t | c) = (1 + w) grad log p_t(x | c) - w grad log p_t(x)            (§8.2)
                                         = grad log [ p_t(x | c)^(1+w) / p_t(x)^w ]
    DPS (training-free)   s_y(x, t)     = grad log p_t(x) + zeta grad_x log p(y | x0_hat(x, t))      (§8.3)

Both guided fields are the score of a *tilted* density at each t, but the tilted densities of
different t are not the marginals of one diffusion, so the samples at t = 0 do **not** follow
p(x|c)^(1+w)/p(x)^w (see the chapter "Guidance" and :func:`sample_tilted`, which draws that t = 0
density exactly for comparison). ``cond`` is a LongTensor (B,) of class labels;
the label ``null_label`` (= number of classes by convention) means "unconditional".
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from diffedu._checks import append_dims, check_data, check_finite, check_generator, check_int, check_model, check_time
from diffedu.param import Prediction, to_x0
from diffedu.schedules import Schedule

__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance", "DPSGuidance", "cfg", "classifier_guidance", "drop_labels"]


def _check_scale(w, name="w"):
    return check_finite(w, name)


def _check_labels(cond, x, name="cond"):
    if not torch.is_tensor(cond) or cond.is_floating_point() or cond.shape != (x.shape[0],):
        raise ValueError(f"{name}: expected integer class labels of shape ({x.shape[0]},), got "
                         f"{type(cond).__name__ if not torch.is_tensor(cond) else (tuple(cond.shape), cond.dtype)}")
    return cond.to(x.device)


def _from_eps(eps, x, t, schedule) -> Prediction:
    return Prediction(x0=to_x0(eps, "eps", x, t, schedule), eps=eps, x_t=x, t=t, schedule=schedule)


class _Guided(nn.Module):
    """Base of the guidance wrappers: a wrapped ``self.model`` whose schedule they share, so every
    sampler accepts them (the model contract ``forward(x_t, t, cond) -> Prediction``, monograph §6.3)."""

    @property
    def schedule(self) -> Schedule:
        return self.model.schedule

    @staticmethod
    def _checked_time(x_t: torch.Tensor, t) -> torch.Tensor:
        check_data(x_t, "x_t")
        return check_time(t, x_t)


class ClassifierFreeGuidance(_Guided):
    """Classifier-free guidance (Ho & Salimans 2022; monograph §8.2): eps_w = (1 + w) eps(x, t, c) - w eps(x, t, null).

    ``model`` is trained with label dropout (:func:`drop_labels`), so ``model(x, t, null_label)``
    is the unconditional model. In score units this is (1 + w) grad log p_t(x|c) - w grad log p_t(x),
    the score of p_t(x|c)^(1+w) / p_t(x)^w. w = 0 is the plain conditional model, w = -1 the
    unconditional one. Both branches run as one batched call.
    """

    def __init__(self, model, w: float, null_label: int):
        super().__init__()
        self.model = check_model(model)
        self.w = _check_scale(w)
        if isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < 0:
            raise ValueError(f"null_label: expected the non-negative integer label meaning 'unconditional', got {null_label!r}")
        self.null_label = null_label

    def forward(self, x_t: torch.Tensor, t, cond=None) -> Prediction:
        t = self._checked_time(x_t, t)
        if cond is None:
            raise ValueError("cond: classifier-free guidance needs class labels (B,); pass null_label for unconditional")
        cond = _check_labels(cond, x_t)
        both = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, torch.full_like(cond, self.null_label)]))
        e_c, e_u = both.eps.chunk(2)
        return _from_eps((1 + self.w) * e_c - self.w * e_u, x_t, t, self.schedule)


class ClassifierGuidance(_Guided):
    """Classifier guidance (Dhariwal & Nichol 2021; monograph §8.1): score + w grad_x log p_t(c | x).

    ``classifier(x_t, t)`` returns log-probabilities or logits (B, C) of a *noise-aware*
    classifier (trained on x_t, or the exact ``GaussianMixture.class_log_probs_t``); its gradient
    is taken by autograd. In eps units: eps_w = eps(x, t) - w sigma_t grad log p_t(c | x).
    ``model`` is called unconditionally (``cond=None``).
    """

    def __init__(self, model, classifier: Callable, w: float):
        super().__init__()
        self.model = check_model(model)
        if not callable(classifier):
            raise TypeError(f"classifier: expected a callable (x_t, t) -> logits (B, C), got {type(classifier).__name__}")
        self.classifier, self.w = classifier, _check_scale(w)

    def class_grad(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """grad_x log p_t(c | x) at (x_t, t) by autograd (log_softmax makes logits and log-probs alike)."""
        with torch.enable_grad():
            xg = x_t.detach().requires_grad_(True)
            logp = torch.log_softmax(self.classifier(xg, t), -1)
            sel = logp.gather(1, cond[:, None]).sum()
            (grad,) = torch.autograd.grad(sel, xg)
        return grad

    def forward(self, x_t: torch.Tensor, t, cond=None) -> Prediction:
        t = self._checked_time(x_t, t)
        if cond is None:
            raise ValueError("cond: classifier guidance needs the target class labels (B,)")
        cond = _check_labels(cond, x_t)
        base = self.model(x_t, t, None)
        sigma = append_dims(self.schedule.sigma(t), x_t)
        return _from_eps(base.eps - self.w * sigma * self.class_grad(x_t, t, cond), x_t, t, self.schedule)


class DPSGuidance(_Guided):
    """Diffusion posterior sampling (Chung et al. 2023; monograph §8.3): training-free guidance for y = A(x0) + noise.

    The intractable likelihood p_t(y | x_t) is replaced by p(y | x0_hat(x_t)) with Tweedie's
    x0_hat = E[x0 | x_t] (§3.3), and its gradient is taken through the denoiser by autograd:
    score_y = score + zeta grad_x [ -||y - A(x0_hat)||^2 / (2 noise_std^2) ]. ``forward_op`` is A
    (e.g. a mask for inpainting, the identity for denoising); ``zeta`` scales the step.
    ``normalized=True`` uses DPS's own step rule (Chung et al. 2023, Alg. 1): the gradient of the
    residual norm ||y - A(x0_hat)|| per example, times ``zeta`` (``noise_std`` then drops out), which
    stays finite near t = 1 where x0_hat = (x_t - sigma_t eps) / alpha_t is huge; the default is the
    plain Gaussian log-likelihood gradient times ``zeta``.
    """

    def __init__(self, model, forward_op: Callable, y: torch.Tensor, noise_std: float, zeta: float = 1.0,
                 normalized: bool = False):
        super().__init__()
        self.model = check_model(model)
        if not callable(forward_op):
            raise TypeError(f"forward_op: expected a callable A(x0) -> measurement, got {type(forward_op).__name__}")
        if not torch.is_tensor(y):
            raise TypeError(f"y: expected the measurement tensor, got {type(y).__name__}")
        if not (isinstance(noise_std, (int, float)) and noise_std > 0):
            raise ValueError(f"noise_std: expected a positive measurement noise level, got {noise_std!r}")
        self.forward_op, self.y, self.noise_std, self.zeta = forward_op, y, float(noise_std), _check_scale(zeta, "zeta")
        self.normalized = bool(normalized)

    def forward(self, x_t: torch.Tensor, t, cond=None) -> Prediction:
        t = self._checked_time(x_t, t)
        with torch.enable_grad():
            xg = x_t.detach().requires_grad_(True)
            p = self.model(xg, t, cond)
            resid = (self.y.to(x_t) - self.forward_op(p.x0)).reshape(len(x_t), -1)
            if self.normalized:  # -||y - A(x0_hat)|| per example (DPS, Alg. 1)
                loglik = -resid.norm(dim=1).sum()
            else:
                loglik = -(resid**2).sum() / (2 * self.noise_std**2)
            (grad,) = torch.autograd.grad(loglik, xg)
        sigma = append_dims(self.schedule.sigma(t), x_t)
        return _from_eps(p.eps.detach() - self.zeta * sigma * grad, x_t, t, self.schedule)


def cfg(model, w: float, null_label: int) -> ClassifierFreeGuidance:
    """Shorthand for :class:`ClassifierFreeGuidance` (monograph §8.2)."""
    return ClassifierFreeGuidance(model, w, null_label)


def classifier_guidance(model, classifier: Callable, w: float) -> ClassifierGuidance:
    """Shorthand for :class:`ClassifierGuidance` (monograph §8.1)."""
    return ClassifierGuidance(model, classifier, w)


def drop_labels(labels: torch.Tensor, p: float, null_label: int, generator=None) -> torch.Tensor:
    """Label dropout for CFG training (monograph §8.2): replace each label by ``null_label`` with probability ``p``."""
    if not torch.is_tensor(labels) or labels.is_floating_point() or labels.ndim != 1 or labels.numel() == 0:
        raise ValueError("labels: expected integer class labels of shape (B,)")
    if (labels < 0).any():
        raise ValueError(f"labels: class labels must be non-negative, got {int(labels.min())}")
    if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0 <= p <= 1):
        raise ValueError(f"p: expected a dropout probability in [0, 1], got {p!r}")
    check_int(null_label, "null_label", 0)
    check_generator(generator)
    dev = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape, generator=generator, device=dev).to(labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_label), labels)


# ----------------------------------------------------------------------------- exact references on a mixture
