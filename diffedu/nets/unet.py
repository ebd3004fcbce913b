"""A small U-Net for images (B, C, H, W) (monograph §2.2, §4)."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from diffedu.nets.embedding import _check_int, _check_num_classes, _check_x, _labels_for, _time_for, _TimeEmbedding

__all__ = ["UNet"]


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
