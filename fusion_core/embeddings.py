"""Small embedding modules shared by adapters: sinusoidal features and the diffusion-timestep MLP.

TransFusion (sec. 3): the diffusion step goes through a sinusoidal embedding, then
Linear–SiLU–Linear; the same module serves Transfusion's linear patch layers (timestep embedding
added to each patch, footnote 6) and the U-Net blocks' conditioning.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal(x: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``(N,)`` values (steps or positions) → ``(N, dim)`` sin/cos features (Vaswani et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device) / half)
    args = x.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


class TimestepEmbedding(nn.Module):
    """Diffusion step ``(N,)`` → ``(N, out_dim)``: sinusoidal → Linear → SiLU → Linear."""

    def __init__(self, out_dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        """``(N,)`` steps → ``(N, out_dim)`` in the module's dtype."""
        return self.mlp(sinusoidal(t, self.freq_dim).to(self.mlp[0].weight.dtype))
