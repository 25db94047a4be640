"""A third-party adapter as a user would write it from docs/writing-an-adapter.md: pen strokes
(n, 2) of dx/dy, 4 points per position. The tests install it as a package with an entry point
(``pen = penpkg:PenAdapter``) without pip: a ``*.dist-info`` folder beside it on the path."""

import numpy as np
import torch
from torch import nn

from fusion_core.adapter import Adapter, Embedded
from fusion_core.embeddings import TimestepEmbedding, sinusoidal


class PenAdapter(Adapter):
    kind = "continuous"
    attention = "bidirectional"

    def __init__(self, dim: int, points: int = 4, name: str = "pen"):
        super().__init__(dim)
        self.name, self.points = name, points
        self.inp = nn.Linear(2 * points, dim)
        self.out = nn.Linear(dim, 2 * points)
        self.t_embed = TimestepEmbedding(dim)

    def encode(self, raw):
        try:
            x = torch.as_tensor(np.asarray(raw, dtype=np.float32))
        except (TypeError, ValueError):
            raise ValueError(f"a stroke is an (n, 2) array of dx, dy, got {type(raw).__name__}") from None
        if x.ndim != 2 or x.shape[1] != 2 or not x.shape[0] or x.shape[0] % self.points:
            raise ValueError(f"a stroke is (n, 2) with n a positive multiple of {self.points}, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("a stroke must be finite")
        return x.clone()

    def check_shape(self, shape):
        if len(shape) != 2 or shape[1] != 2 or shape[0] % self.points:
            raise ValueError(f"adapter {self.name!r} takes strokes (n, 2) with n a multiple of {self.points}, got {shape}")

    def num_positions(self, payload):
        return payload.shape[0] // self.points

    def embed(self, payloads, t=None):
        device, dtype = self.inp.weight.device, self.inp.weight.dtype
        frames = [p.to(device, dtype).reshape(-1, 2 * self.points) for p in payloads]
        tokens = [self.inp(f) + sinusoidal(torch.arange(len(f), device=device), self.dim).to(dtype)
                  + self.t_embed(t[i : i + 1].to(device)) for i, f in enumerate(frames)]
        return Embedded(torch.cat(tokens), context=[len(f) for f in frames])

    def head(self, hidden, embedded):
        return [self.out(h).reshape(-1, 2) for h in hidden.split(embedded.context)]

    def decode(self, payload):
        return payload

    def describe(self, raw):
        path = np.cumsum(np.asarray(raw), 0)
        length = np.linalg.norm(np.diff(path, axis=0), axis=1).sum()
        return f"a stroke of {len(path)} points, straightness {straightness(raw):.2f}, length {length:.2f}"

    def render(self, raw, ax):
        path = np.cumsum(np.asarray(raw), 0)
        ax.plot(path[:, 0], path[:, 1])
        ax.set_aspect("equal")
        return True


def straightness(stroke) -> float:
    """|end - start| / path length: 1 for a straight line, near 0 for a closed circle."""
    d = np.asarray(stroke, dtype=np.float64)
    length = np.linalg.norm(d, axis=1).sum()
    return float(np.linalg.norm(d.sum(0)) / max(length, 1e-9))


def circle(n: int = 16, r: float = 0.3, phase: float = 0.0) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n + 1) + phase
    pts = np.stack([np.cos(a), np.sin(a)], 1) * r
    return np.diff(pts, axis=0)


def line(n: int = 16, length: float = 1.0, angle: float = 0.0) -> np.ndarray:
    step = length / n * np.array([np.cos(angle), np.sin(angle)])
    return np.tile(step, (n, 1))
