"""diffedu: the runnable companion to *The Principles of Diffusion Models* (Lai, Song, Kim, Mitsufuji, Ermon).

Every derivation of the monograph as tested PyTorch code. Conventions: continuous time t in
[0, 1] with **t = 0 data and t = 1 noise**; data of shape (B, ...); nothing holds a global
device. The foundation (``_checks``, ``schedules``, ``gaussian``, ``forward``, ``param``, ``sde``,
``processes``, ``toy``, ``autodiff``) is flat; above it, one room per role: ``objectives``, ``samplers``,
``nets``, ``data``, ``metrics``, ``engine``; then ``guidance``, ``likelihood``, ``transport``,
``distill``, ``baselines``; on top ``viz``, ``notebook``, ``exercises`` (README, "Layout").
"""
from . import forward, param, schedules, sde, toy  # noqa: F401

__version__ = "0.1.0"
