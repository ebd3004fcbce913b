"""Networks: the function approximators every chapter trains.  (monograph §2.2, §6.1, §8.2)

Two networks, both with the calling convention every sampler and loss in diffedu uses::

    out = net(x, t, cond=None)        # x: (B, ...), t: (B,) floats in [0, 1], out shaped like x

* :class:`MLP` — for 2D toy data (B, 2): a few fully connected layers that see x together with
  a sinusoidal embedding of t. Fast on a CPU; the toy chapters train it in seconds.
* :class:`UNet` — for images (B, C, H, W): a small U-Net (residual blocks, GroupNorm, optional
  self-attention at low resolution) with the time embedding added inside every residual block,
  as in DDPM (monograph §2.2) and the score-SDE networks (§4).

What a network *predicts* (noise, clean data, score, velocity) is not its business: the same
net serves every row of Table 6.1 (monograph §6.1); :mod:`diffedu.param` does the converting.

Class conditioning (monograph §8.2, classifier-free guidance): with ``num_classes=K`` the net
takes ``cond``, a LongTensor (B,) of labels in {0, ..., K-1}, or the extra "null" label ``K``
that means "no label". ``cond=None`` is the same as passing the null label everywhere, so an
unconditional call and a dropped-out label are one and the same thing.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["sinusoidal_embedding", "MLP", "UNet"]

TIME_SCALE = 1000.0  # t in [0, 1] is stretched to [0, 1000] before the sinusoids (DDPM's step range)


def sinusoidal_embedding(t: torch.Tensor, dim: int, *, scale: float = TIME_SCALE, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of continuous time, shape (B,) -> (B, dim).

    Computes ``[cos(s t w_0), ..., cos(s t w_{h-1}), sin(s t w_0), ..., sin(s t w_{h-1})]`` with
    ``h = dim // 2``, ``s = scale`` and frequencies ``w_k = max_period ** (-k / h)`` spaced
    geometrically from 1 down to about 1/max_period — the Transformer position code, used by
    DDPM to tell its network the noise level (monograph §2.2). t in [0, 1] is multiplied by
    ``scale`` (1000 by default) so that the slow and fast frequencies both vary across [0, 1].
    An odd ``dim`` is padded with one zero column.
    """
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim: expected an int >= 2, got {type(dim).__name__}")
    if dim < 2:
        raise ValueError(f"dim: expected an int >= 2, got {dim}")
    if not torch.is_tensor(t):
        raise TypeError(f"t: expected a floating tensor of shape (B,), got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"t: expected continuous time as a floating tensor in [0, 1], got dtype {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"t: expected shape (B,), got {tuple(t.shape)}")
    return _embed(t, _frequencies(dim, scale, max_period, t.device), dim)


def _frequencies(dim: int, scale: float, max_period: float, device=None) -> torch.Tensor:
    """``scale * w_k`` for k = 0..dim//2 - 1, the (scaled) angular frequencies of the embedding."""
    half = dim // 2
    k = torch.arange(half, device=device, dtype=torch.float32)
    return scale * torch.exp(-math.log(max_period) * k / half)


def _embed(t: torch.Tensor, scaled_freqs: torch.Tensor, dim: int) -> torch.Tensor:
    dtype = torch.promote_types(scaled_freqs.dtype, torch.float32)  # never form 1000 t in half precision
    args = t.to(dtype)[:, None] * scaled_freqs.to(dtype)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.to(t.dtype)


class _TimeEmbedding(nn.Module):
    """:func:`sinusoidal_embedding` with its frequencies computed once (a non-persistent buffer)."""

    def __init__(self, dim: int, scale: float = TIME_SCALE, max_period: float = 10000.0):
        super().__init__()
        self.dim = dim
        self.register_buffer("freqs", _frequencies(dim, scale, max_period), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return _embed(t, self.freqs, self.dim)


# ----------------------------------------------------------------------------------------------
# input checks shared by both networks (cheap: shapes and dtypes, one range check on labels)


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def _check_num_classes(num_classes) -> Optional[int]:
    if num_classes is None:
        return None
    return _check_int(num_classes, "num_classes", 1)


def _time_for(t, x: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as a (B,) tensor on x's device and dtype; a float or 0-d tensor is broadcast."""
    if isinstance(t, bool):
        raise TypeError("t: expected a float time in [0, 1], got bool")
    if isinstance(t, (int, float)):
        t = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    elif not torch.is_tensor(t):
        raise TypeError(f"t: expected a float or a floating tensor of shape (B,), got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"t: expected continuous time as a floating tensor in [0, 1] (t = 0 data, t = 1 noise), got dtype {t.dtype}"
        )
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    elif t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t: expected shape ({x.shape[0]},) to match the batch of x, got {tuple(t.shape)}")
    return t.to(device=x.device, dtype=x.dtype)


def _labels_for(cond, x: torch.Tensor, num_classes: Optional[int]) -> Optional[torch.Tensor]:
    """Validate class labels; ``None`` becomes the null label ``num_classes`` (monograph §8.2)."""
    if num_classes is None:
        if cond is not None:
            raise ValueError("cond: this network was built with num_classes=None, so it takes no labels; pass cond=None")
        return None
    if cond is None:
        return torch.full((x.shape[0],), num_classes, dtype=torch.long, device=x.device)
    if not torch.is_tensor(cond):
        raise TypeError(f"cond: expected a LongTensor of class labels of shape (B,), got {type(cond).__name__}")
    if cond.dtype.is_floating_point or cond.dtype.is_complex or cond.dtype == torch.bool:
        raise TypeError(f"cond: expected integer class labels (torch.long), got dtype {cond.dtype}")
    if cond.ndim != 1 or cond.shape[0] != x.shape[0]:
        raise ValueError(f"cond: expected shape ({x.shape[0]},) to match the batch of x, got {tuple(cond.shape)}")
    if bool(((cond < 0) | (cond > num_classes)).any()):
        raise ValueError(
            f"cond: labels must lie in {{0, ..., {num_classes - 1}}} or be the null label {num_classes}, "
            f"got range [{int(cond.min())}, {int(cond.max())}]"
        )
    return cond.to(device=x.device, dtype=torch.long)


def _check_x(x, ndim: int, what: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"x: expected a torch.Tensor {what}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"x: expected a tensor {what}, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x: empty batch (B = 0)")
    return x


# ----------------------------------------------------------------------------------------------
# toy MLP


class MLP(nn.Module):
    """A time-conditioned MLP for vector data (B, dim), e.g. the 2D toys (monograph §2.2, §6.1).

    ``net(x, t, cond=None)`` computes ``Linear -> SiLU -> ... -> Linear`` on the concatenation of
    x and a time feature (the sinusoidal embedding of t, plus a learned class embedding when
    ``num_classes`` is set), with ``depth`` hidden layers of width ``hidden``, and returns a
    tensor shaped like x. It is deliberately plain: the toy chapters need a net that trains in
    seconds on a CPU and that a reader can take in at a glance.

    Args:
        dim: data dimension (2 for the toys).
        hidden: width of every hidden layer.
        depth: number of hidden layers (>= 1).
        time_dim: size of the sinusoidal time embedding.
        num_classes: number of classes K for class conditioning; label K is the "null" label
            used for classifier-free-guidance dropout (monograph §8.2). None: unconditional.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 32, num_classes: Optional[int] = None):
        super().__init__()
        self.dim = _check_int(dim, "dim")
        self.hidden = _check_int(hidden, "hidden")
        self.depth = _check_int(depth, "depth")
        self.time_dim = _check_int(time_dim, "time_dim", 2)
        self.num_classes = _check_num_classes(num_classes)
        self.time_embed = _TimeEmbedding(self.time_dim)
        self.class_embed = None if self.num_classes is None else nn.Embedding(self.num_classes + 1, self.time_dim)
        layers = [nn.Linear(self.dim + self.time_dim, self.hidden), nn.SiLU()]
        for _ in range(self.depth - 1):
            layers += [nn.Linear(self.hidden, self.hidden), nn.SiLU()]
        layers.append(nn.Linear(self.hidden, self.dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Evaluate the net at (x, t[, cond]); returns a tensor of shape (B, dim) like x."""
        x = _check_x(x, 2, f"of shape (B, {self.dim})")
        if x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (B, {self.dim}), got {tuple(x.shape)}")
        t = _time_for(t, x)
        labels = _labels_for(cond, x, self.num_classes)
        emb = self.time_embed(t)
        if labels is not None:
            emb = emb + self.class_embed(labels).to(emb.dtype)
        return self.net(torch.cat([x, emb], dim=1))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, depth={self.depth}, time_dim={self.time_dim}, num_classes={self.num_classes}"


# ----------------------------------------------------------------------------------------------
# U-Net


def _groups(channels: int, max_groups: int = 8) -> int:
    """Largest number of GroupNorm groups <= max_groups that divides ``channels``."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with the (time + class) embedding added in between (DDPM)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # each (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """A small U-Net for images (B, C, H, W), conditioned on time and optionally on a class.

    The DDPM architecture in miniature (monograph §2.2; §4 for the score-SDE variant): an input
    convolution, then for each resolution level ``num_res_blocks`` residual blocks followed by a
    stride-2 downsampling (except at the last level), a middle block, and the mirror-image
    upsampling path that concatenates the skip connection saved at the same level. The sinusoidal
    embedding of t (plus a learned class embedding) passes through a small MLP and is added to
    the feature maps inside every residual block. Output has the shape of the input (or
    ``out_channels`` channels).

    Args:
        in_channels: image channels C (1 for digits / MNIST, 3 for CIFAR-10).
        base: channels at the first level; level i has ``base * channel_mults[i]``.
        channel_mults: one multiplier per resolution level; H and W must be divisible by
            ``2 ** (len(channel_mults) - 1)``.
        num_res_blocks: residual blocks per level on each path.
        attention: ``False`` for none, ``True`` for self-attention at the lowest resolution
            (last level and middle block), or a sequence of level indices that get attention.
        num_classes: K classes for conditioning; label K is the null label (monograph §8.2).
        dropout: dropout rate inside residual blocks.
        out_channels: output channels (default: ``in_channels``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention: Union[bool, Iterable[int]] = False,
        num_classes: Optional[int] = None,
        dropout: float = 0.0,
        out_channels: Optional[int] = None,
    ):
        super().__init__()
        self.in_channels = _check_int(in_channels, "in_channels")
        self.out_channels = self.in_channels if out_channels is None else _check_int(out_channels, "out_channels")
        self.base = _check_int(base, "base")
        mults = tuple(channel_mults) if isinstance(channel_mults, (list, tuple)) else None
        if not mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mults):
            raise ValueError(f"channel_mults: expected a non-empty sequence of positive ints, got {channel_mults!r}")
        self.channel_mults = mults
        self.num_res_blocks = _check_int(num_res_blocks, "num_res_blocks")
        self.num_classes = _check_num_classes(num_classes)
        if not (isinstance(dropout, (int, float)) and 0.0 <= float(dropout) < 1.0):
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        n_levels = len(mults)
        if isinstance(attention, bool):
            attn_levels = {n_levels - 1} if attention else set()
            mid_attn = attention
        else:
            try:
                attn_levels = set(attention)
            except TypeError:
                raise TypeError(f"attention: expected a bool or a sequence of level indices, got {attention!r}") from None
            if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_levels for i in attn_levels):
                raise ValueError(f"attention: level indices must be ints in [0, {n_levels - 1}], got {attention!r}")
            mid_attn = (n_levels - 1) in attn_levels
        self.attention_levels = tuple(sorted(attn_levels))

        self.time_dim = self.base
        emb_dim = 4 * self.base
        self.time_mlp = nn.Sequential(_TimeEmbedding(self.time_dim), nn.Linear(self.time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = None if self.num_classes is None else nn.Embedding(self.num_classes + 1, emb_dim)

        self.conv_in = nn.Conv2d(self.in_channels, self.base, 3, padding=1)
        ch = self.base
        self.down = nn.ModuleList()
        skip_chs = []
        for i, m in enumerate(mults):
            out_ch = self.base * m
            level = nn.ModuleDict()
            level["blocks"] = nn.ModuleList(
                [_ResBlock(ch if j == 0 else out_ch, out_ch, emb_dim, float(dropout)) for j in range(self.num_res_blocks)]
            )
            level["attn"] = _Attention(out_ch) if i in attn_levels else nn.Identity()
            level["down"] = nn.Conv2d(out_ch, out_ch, 3, stride=2, padding=1) if i < n_levels - 1 else nn.Identity()
            self.down.append(level)
            ch = out_ch
            skip_chs.append(ch)
        self.mid1 = _ResBlock(ch, ch, emb_dim, float(dropout))
        self.mid_attn = _Attention(ch) if mid_attn else nn.Identity()
        self.mid2 = _ResBlock(ch, ch, emb_dim, float(dropout))
        self.up = nn.ModuleList()
        for i in reversed(range(n_levels)):
            out_ch = self.base * mults[i]
            level = nn.ModuleDict()
            level["up"] = nn.Conv2d(ch, ch, 3, padding=1) if i < n_levels - 1 else nn.Identity()
            level["blocks"] = nn.ModuleList(
                [_ResBlock(ch + skip_chs[i] if j == 0 else out_ch, out_ch, emb_dim, float(dropout)) for j in range(self.num_res_blocks)]
            )
            level["attn"] = _Attention(out_ch) if i in attn_levels else nn.Identity()
            self.up.append(level)
            ch = out_ch
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)

    @property
    def downsample_factor(self) -> int:
        """H and W must be divisible by this: ``2 ** (len(channel_mults) - 1)``."""
        return 2 ** (len(self.channel_mults) - 1)

    def forward(self, x: torch.Tensor, t, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Evaluate the U-Net at (x, t[, cond]); returns (B, out_channels, H, W)."""
        x = _check_x(x, 4, f"of shape (B, {self.in_channels}, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected {self.in_channels} channels, shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        f = self.downsample_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"x: height and width must be divisible by 2**(len(channel_mults)-1) = {f} "
                f"for channel_mults={self.channel_mults}, got H={x.shape[2]}, W={x.shape[3]}"
            )
        t = _time_for(t, x)
        labels = _labels_for(cond, x, self.num_classes)
        emb = self.time_mlp(t)
        if labels is not None:
            emb = emb + self.class_embed(labels).to(emb.dtype)

        h = self.conv_in(x)
        skips = []
        for level in self.down:
            for block in level["blocks"]:
                h = block(h, emb)
            h = level["attn"](h)
            skips.append(h)
            h = level["down"](h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level in self.up:
            if not isinstance(level["up"], nn.Identity):
                h = level["up"](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = torch.cat([h, skips.pop()], dim=1)
            for block in level["blocks"]:
                h = block(h, emb)
            h = level["attn"](h)
        return self.conv_out(F.silu(self.norm_out(h)))
