"""Timestep respacing: which of the ``T`` training steps a sampler visits (Nichol & Dhariwal 2021,
sec. 4; the "trailing" rule of Lin et al. 2024, which always starts at ``T - 1``)."""

from __future__ import annotations

import numpy as np

SPACINGS = ("trailing", "linspace", "leading")


def respace(T: int, steps: int | None = None, spacing: str = "trailing") -> np.ndarray:
    """Descending, distinct steps in ``[0, T-1]`` to visit; ``steps=None`` visits all ``T``.

    Raises:
        ValueError: ``steps`` not in ``[1, T]`` or unknown ``spacing``.
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
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return np.ascontiguousarray(ts[:steps])
