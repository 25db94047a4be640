"""Noise schedules as ``alphas_cumprod`` tables (float64).

- ``linear``: Ho et al. 2020, betas linear from 1e-4 to 0.02 (rescaled by 1000/T).
- ``cosine``: Nichol & Dhariwal 2021, eq. 17, ``f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2)``,
  betas clipped at 0.999. Used by both Transfusion (sec. 3.2) and TransFusion (sec. 3).
- ``scaled_linear``: Stable Diffusion's, betas linear in sqrt space from 0.00085 to 0.012.
- ``sigmoid``: Jabri et al. 2022 (RIN), ``sigmoid((t*(end-start)+start)/tau)`` normalized.

Index ``t`` of a table is the diffusion step ``t in {0, ..., T-1}`` (0 = least noise).
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("linear", "cosine", "scaled_linear", "sigmoid")


def betas_to_alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 - betas)


def linear(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    scale = 1000.0 / T
    return betas_to_alphas_cumprod(np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64))


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = np.array([min(1 - f(i + 1) / f(i), max_beta) for i in range(T)], dtype=np.float64)
    return betas_to_alphas_cumprod(betas)


def scaled_linear(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> np.ndarray:
    betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    return betas_to_alphas_cumprod(betas)


def sigmoid(T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
            max_beta: float = 0.999) -> np.ndarray:
    def sig(x):
        return 1 / (1 + np.exp(-x))

    t = np.arange(T + 1, dtype=np.float64) / T
    v_start, v_end = sig(start / tau), sig(end / tau)
    f = (-sig((t * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    betas = np.clip(1 - f[1:] / f[:-1], 0, max_beta)
    return betas_to_alphas_cumprod(betas)


def make_schedule(name: str, T: int = 1000, **kwargs) -> np.ndarray:
    """``alphas_cumprod`` of length ``T`` for a named schedule.

    Raises:
        ValueError: unknown name or ``T < 1``.
    """
    fns = {"linear": linear, "cosine": cosine, "scaled_linear": scaled_linear, "sigmoid": sigmoid}
    if name not in fns:
        raise ValueError(f"unknown schedule {name!r}; known: {SCHEDULES}")
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    return fns[name](T, **kwargs)
