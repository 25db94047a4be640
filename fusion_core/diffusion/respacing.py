"""Timestep respacing: which of the ``T`` training steps a sampler visits.

- ``trailing`` (Lin et al. 2024): evenly spaced, always starting at ``T - 1``.
- ``linspace``: evenly spaced from ``T - 1`` down to ``0``.
- ``leading`` (DDIM's original): multiples of ``T // steps``.
- ``logsnr`` (Lu et al. 2022, DPM-Solver sec. 3.3): evenly spaced in
  ``lambda = log(a/s)`` between ``lambda_floor`` (or the last step's, if higher) and ``t = 0``,
  starting at ``T - 1``. Few-step ODE solvers need the fine steps near the data this gives.
"""

from __future__ import annotations

import numpy as np

SPACINGS = ("trailing", "linspace", "leading", "logsnr")


def respace(T: int, steps: int | None = None, spacing: str = "trailing",
            alphas_cumprod: np.ndarray | None = None, lambda_floor: float = -5.0) -> np.ndarray:
    """Descending, distinct steps in ``[0, T-1]`` to visit; ``steps=None`` visits all ``T``.

    Raises:
        ValueError: ``steps`` not in ``[1, T]``, unknown ``spacing``, or ``logsnr`` without
            ``alphas_cumprod``.
    """
    steps = T if steps is None else steps
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, T={T}], got {steps}")
    if spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, steps)).astype(np.int64)[::-1]
    elif spacing == "leading":
        ts = (np.arange(steps) * (T // steps))[::-1].astype(np.int64)
    elif spacing == "logsnr":
        if alphas_cumprod is None:
            raise ValueError("spacing='logsnr' needs alphas_cumprod")
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        lam = 0.5 * np.log(ac / (1 - ac))  # decreasing in t
        targets = np.linspace(max(lam[-1], lambda_floor), lam[0], steps)
        ts = np.searchsorted(-lam, -targets).clip(0, T - 1)  # nearest step at or below target
        ts[0] = T - 1
        ts = _strictly_decreasing(ts)
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return np.ascontiguousarray(ts[:steps])


def _strictly_decreasing(ts: np.ndarray) -> np.ndarray:
    """Nudge collisions apart, keeping the first at ``ts[0]`` and the last >= 0."""
    ts = ts.copy()
    for i in range(1, len(ts)):
        ts[i] = min(ts[i], ts[i - 1] - 1)
    ts = np.maximum(ts, np.arange(len(ts))[::-1])
    for i in range(len(ts) - 2, -1, -1):
        ts[i] = max(ts[i], ts[i + 1] + 1)
    return ts
