"""U-Net down and up blocks: the entry and exit layers of a continuous modality, in 1-D or 2-D.

Transfusion (sec. 3.2, footnote 7; Table 6): instead of one linear layer per patch, an image enters
the transformer through U-Net down blocks that reduce it to the patch grid and leaves through up
blocks that restore it, with skip connections from each down level to its up level carried across
the transformer. The same blocks serve a time series along its time axis (``dims=1``): the exit then
sees the noisy input at full resolution, so a value inside a patch need not be drawn from the one
vector its position holds.

Shapes: n items, C channels, L positions along each spatial axis (``L`` or ``H x W``), c widths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DESIGNS = ("linear", "unet")  # how a continuous modality enters and leaves the backbone


def _conv(dims: int) -> type[nn.Module]:
    if dims not in (1, 2):
        raise ValueError(f"U-Net blocks are 1-D or 2-D, got dims={dims!r}")
    return nn.Conv1d if dims == 1 else nn.Conv2d


def _groups(c: int, groups: int) -> int:
    return math.gcd(c, groups)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, timestep scale/shift, GroupNorm → SiLU → conv, plus skip."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int = 8, dims: int = 2):
        super().__init__()
        conv = _conv(dims)
        self.norm1 = nn.GroupNorm(_groups(c_in, groups), c_in)
        self.conv1 = conv(c_in, c_out, 3, padding=1)
        self.t_proj = nn.Linear(t_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out, groups), c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=1)
        self.skip = conv(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        # x: n c L... ; temb: n t_dim
        h = self.conv1(F.silu(self.norm1(x)))
        mod = self.t_proj(F.silu(temb))
        scale, shift = mod.view(*mod.shape, *([1] * (x.ndim - 2))).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class UNetDown(nn.Module):
    """``(n, C, L...)`` → features on the patch grid ``(n, c_last, L / 2^levels...)`` and the skips
    for the up path (one per level, finest first)."""

    def __init__(self, in_ch: int, channels: Sequence[int], t_dim: int, dims: int = 2):
        super().__init__()
        conv = _conv(dims)
        self.conv_in = conv(in_ch, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(channels[i], channels[i], t_dim, dims=dims) for i in range(len(channels)))
        self.downs = nn.ModuleList(conv(channels[i], channels[i + 1], 3, stride=2, padding=1)
                                   for i in range(len(channels) - 1))

    def forward(self, x: Tensor, temb: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.blocks):
            h = block(h, temb)
            skips.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        return h, skips


class UNetUp(nn.Module):
    """Patch-grid features + the down path's skips → ``(n, C, L...)``."""

    def __init__(self, out_ch: int, channels: Sequence[int], t_dim: int, dims: int = 2):
        super().__init__()
        conv = _conv(dims)
        n = len(channels)
        self.blocks = nn.ModuleList(ResBlock(2 * channels[i], channels[i], t_dim, dims=dims) for i in range(n))
        self.ups = nn.ModuleList(conv(channels[i + 1], channels[i], 3, padding=1) for i in range(n - 1))
        self.norm_out = nn.GroupNorm(_groups(channels[0], 8), channels[0])
        self.conv_out = conv(channels[0], out_ch, 3, padding=1)

    def forward(self, h: Tensor, skips: list[Tensor], temb: Tensor) -> Tensor:
        for i in reversed(range(len(self.blocks))):
            h = self.blocks[i](torch.cat([h, skips[i]], dim=1), temb)
            if i > 0:
                h = self.ups[i - 1](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def unet_levels(patch: int, channels: Sequence[int]) -> list[int]:
    """The widths a patch of ``patch`` positions per side needs: ``log2(patch) + 1`` of ``channels``.

    Raises:
        ValueError: a patch that is not a power of two, or fewer widths than levels.
    """
    levels = round(math.log2(patch)) if patch >= 1 else -1
    if levels < 0 or 2**levels != patch:
        raise ValueError(f"design='unet' needs a power-of-two patch, got {patch}")
    if len(channels) < levels + 1:
        raise ValueError(f"a patch of {patch} needs {levels + 1} unet_channels (one per level, finest first), "
                         f"got {list(channels)}")
    return list(channels[: levels + 1])
