"""Exponential moving average of the weights: the network diffusion models sample with (monograph §6.1)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from diffedu._checks import check_positive

__all__ = ["EMA"]


class EMA:
    """Exponential moving average of a model's weights (the weights diffusion models sample with).

    Keeps a frozen copy ``self.model`` of the network whose parameters follow
    ``theta_ema <- decay * theta_ema + (1 - decay) * theta`` after every :meth:`update`
    (done in one fused ``torch._foreach_lerp_``). Averaging the noisy late iterates of
    SGD/Adam gives markedly better samples than the last iterate — DDPM used decay 0.9999
    (monograph §2.2, §6.1).

    With ``warmup=True`` the decay used at the n-th update is ``min(decay, (1 + n) / (10 + n))``,
    so that the random initial weights are forgotten quickly in short runs (the toy chapters
    train for only a few thousand steps). Buffers (e.g. BatchNorm statistics) are copied.

    Build it from, and update it with, the *unwrapped* network (not a DistributedDataParallel
    or ``torch.compile`` wrapper), so that its state dict loads into a plain model.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.decay = check_positive(decay, "decay", strict=False, upper=1.0)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._refresh()

    def _refresh(self) -> None:
        self._params = list(self.model.parameters())
        self._float_params = [p for p in self._params if p.is_floating_point()]
        self._buffers = list(self.model.buffers())
        self._source = None  # (model, its float parameters, its buffers), cached by update()

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use (smaller during warm-up; monograph §6.1)."""
        if self.warmup:
            n = self.num_updates
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    def _track(self, model: nn.Module) -> None:
        """Cache ``model``'s parameter and buffer lists (walking the module tree costs; do it once)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        params = list(model.parameters())
        if len(params) != len(self._params):
            raise ValueError(
                f"model: has {len(params)} parameter tensors but the EMA tracks {len(self._params)}; "
                "pass the same architecture the EMA was built from (the unwrapped module, not a DDP wrapper)"
            )
        for i, (p, q) in enumerate(zip(params, self._params)):
            if p.shape != q.shape:
                raise ValueError(f"model: parameter {i} has shape {tuple(p.shape)} but the EMA's has {tuple(q.shape)}")
        self._source = (model, [p for p in params if p.is_floating_point()], list(model.buffers()))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights (monograph §6.1)."""
        if self._source is None or self._source[0] is not model:
            self._track(model)
        _, src, buffers = self._source
        if self._float_params:
            torch._foreach_lerp_(self._float_params, src, 1.0 - self.current_decay())
        for b_ema, b in zip(self._buffers, buffers):
            b_ema.copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Overwrite ``model``'s parameters and buffers with the averaged ones; returns ``model``."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        model.load_state_dict(self.model.state_dict())
        return model

    def to(self, *args, **kwargs) -> "EMA":
        """Move the averaged copy, like ``nn.Module.to``; returns self."""
        self.model.to(*args, **kwargs)
        self._refresh()
        return self

    def state_dict(self) -> dict:
        """Everything needed to resume: decay, warm-up flag, number of updates, averaged weights."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, dict) or "model" not in state:
            raise TypeError("state: expected a dict produced by EMA.state_dict()")
        self.decay = float(state.get("decay", self.decay))
        self.warmup = bool(state.get("warmup", self.warmup))
        self.num_updates = int(state.get("num_updates", 0))
        self.model.load_state_dict(state["model"])
