"""The toy MLP for vector data (B, dim) (monograph §2.2, §6.1)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from diffedu.nets.embedding import _check_int, _check_num_classes, _check_x, _labels_for, _time_for, _TimeEmbedding

__all__ = ["MLP"]
# toy MLP


class MLP(nn.Module):
    """A time-conditioned MLP for vector data (B, dim), e.g. the 2D toys (monograph §2.2, §6.1).

    ``net(x, t, cond=None)`` computes ``Linear -> SiLU -> ... -> Linear`` on the concatenation of
    x and a time feature (the sinusoidal embedding of t, plus a learned class embedding when
    ``num_classes`` is set), with ``depth`` hidden layers of width ``hidden``, and returns a
    tensor of shape (B, out_dim) — shaped like x by default. It is deliberately plain: the toy
    chapters need a net that trains in seconds on a CPU and that a reader can take in at a glance.

    Args:
        dim: data dimension (2 for the toys).
        hidden: width of every hidden layer.
        depth: number of hidden layers (>= 1).
        time_dim: size of the sinusoidal time embedding; 0 builds a net of x alone, called as
            ``net(x)`` (a score s(x) or an energy E(x) of a fixed distribution, monograph §1.3, §3.1).
        num_classes: number of classes K for class conditioning; label K is the "null" label
            used for classifier-free-guidance dropout (monograph §8.2). None: unconditional.
        out_dim: output size; None (default) is ``dim`` (a noise, score or velocity field).
            Another size makes other heads, e.g. the K logits of a noisy classifier
            p_t(c | x_t) (``out_dim=K``, monograph §8.1) or a scalar energy (``out_dim=1``).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 32, num_classes: Optional[int] = None,
                 out_dim: Optional[int] = None):
        super().__init__()
        self.dim = _check_int(dim, "dim")
        self.hidden = _check_int(hidden, "hidden")
        self.depth = _check_int(depth, "depth")
        self.time_dim = _check_int(time_dim, "time_dim", 0)
        if self.time_dim == 1:
            raise ValueError("time_dim: expected 0 (a net of x alone) or an embedding size >= 2, got 1")
        self.num_classes = _check_num_classes(num_classes)
        if self.time_dim == 0 and self.num_classes is not None:
            raise ValueError("num_classes: class conditioning is added to the time embedding; it needs time_dim >= 2, got 0")
        self.out_dim = self.dim if out_dim is None else _check_int(out_dim, "out_dim")
        self.time_embed = _TimeEmbedding(self.time_dim) if self.time_dim else None
        self.class_embed = None if self.num_classes is None else nn.Embedding(self.num_classes + 1, self.time_dim)
        layers = [nn.Linear(self.dim + self.time_dim, self.hidden), nn.SiLU()]
        for _ in range(self.depth - 1):
            layers += [nn.Linear(self.hidden, self.hidden), nn.SiLU()]
        layers.append(nn.Linear(self.hidden, self.out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t=None, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Evaluate the net at (x, t[, cond]) (or at x alone if ``time_dim=0``); returns (B, out_dim)."""
        x = _check_x(x, 2, f"of shape (B, {self.dim})")
        if x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (B, {self.dim}), got {tuple(x.shape)}")
        if self.time_embed is None:
            if t is not None:
                raise ValueError("t: this network was built with time_dim=0 (a function of x alone); call it as net(x)")
            _labels_for(cond, x, None)
            return self.net(x)
        if t is None:
            raise TypeError("t: expected a float or a floating tensor of shape (B,); this network takes time (time_dim > 0)")
        t = _time_for(t, x)
        labels = _labels_for(cond, x, self.num_classes)
        emb = self.time_embed(t)
        if labels is not None:
            emb = emb + self.class_embed(labels).to(emb.dtype)
        return self.net(torch.cat([x, emb], dim=1))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.hidden}, depth={self.depth}, time_dim={self.time_dim}, "
                f"num_classes={self.num_classes}, out_dim={self.out_dim}")


# ----------------------------------------------------------------------------------------------
# U-Net
