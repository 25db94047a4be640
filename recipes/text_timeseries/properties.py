"""What a caption says about a series, how to draw a series that has it, and how to measure it
back: trend, seasonality, noise level and one optional event.

A series of the generator (window of ``L`` steps, ``F`` channels, ``u = i / (L - 1)`` in [0, 1]):

    x[i, f] = level_f + slope_f * u + A_f sin(2 pi i / p + phi_f) + event_f(i) + sigma * noise

    trend      rising (slope in [1.5, 3], total change over the window) | falling (negative) | flat (0)
    season     none | period p in {8, 12, 24} steps, amplitude A in [0.6, 1]
    noise      low (sigma in [0.03, 0.07]) | high (sigma in [0.2, 0.3])
    event      none | spike (one step raised by 2–3) | level shift (a step of ±1.5–2.5 that stays),
               at the start [0.1 L, 0.3 L), in the middle [0.4 L, 0.6 L) or at the end [0.7 L, 0.9 L)

Every channel shares the properties (each has its own magnitudes, phase and noise).

:func:`estimate` measures the properties of any series by least squares over the generator's own
family: for every season (none or a period) and every event (none, a spike at step j, a shift at
step k) it fits intercept + slope + season + event to all channels at once and keeps the model
with the lowest BIC (seasons and events pay more: their period and position are searched). The
fitted slope gives the trend, the model's period the season, the event's kind and position the
event, and the step-to-step changes of the residual the noise level (:func:`noise_level`). On
clean series of the generator the true model fits exactly, so every property comes back exactly;
under the generator's noise the estimators err on well under 0.5% of series
(``tests/test_text_timeseries.py`` measures both).

Shapes: N series, L steps, F channels.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, NamedTuple, Sequence

import numpy as np

TRENDS = ("rising", "falling", "flat")
PERIODS = (0, 8, 12, 24)  # 0 = no seasonality
NOISES = ("low", "high")
EVENT_KINDS = ("none", "spike", "shift")
WHERES = ("start", "middle", "end")
EVENTS = ("none",) + tuple(f"{k}@{w}" for k in EVENT_KINDS[1:] for w in WHERES)
PROPERTIES = ("trend", "season", "noise", "event")

# generator ranges, in the series' own units
SLOPE = (1.5, 3.0)
AMPLITUDE = (0.6, 1.0)
SIGMA = {"low": (0.03, 0.07), "high": (0.2, 0.3)}
SPIKE = (2.0, 3.0)
SHIFT = (1.5, 2.5)
EVENT_AT = {"start": (0.1, 0.3), "middle": (0.4, 0.6), "end": (0.7, 0.9)}  # fractions of L
LEVEL = (-0.5, 0.5)

# estimator thresholds: halfway between the generator's classes
SLOPE_THRESHOLD = 0.75  # |total change| above this is a trend
SIGMA_THRESHOLD = 0.12  # residual std above this is "high"
WHERE_EDGES = (0.35, 0.65)  # event position / L below the first edge is "start", above the second "end"
# BIC parameters beyond the fitted coefficients: the searched period and event position make the
# best of many candidates look better than one fixed model (false seasons/events on pure noise < 0.1%)
SEASON_PENALTY = 4.0
EVENT_PENALTY = 5.0
RSS_FLOOR = 1e-6  # per-value variance floor: clean series fit exactly, log(0) must not decide


class Properties(NamedTuple):
    """One series' properties (hashable: a combination of them is a key)."""

    trend: str  # rising | falling | flat
    season: int  # period in steps; 0 = none
    noise: str  # low | high
    event: str  # none | spike@start ... shift@end

    @property
    def event_kind(self) -> str:
        return self.event.split("@")[0]

    @property
    def event_where(self) -> str:
        return self.event.split("@")[1] if "@" in self.event else ""


ALL_COMBINATIONS: tuple[Properties, ...] = tuple(
    Properties(*c) for c in itertools.product(TRENDS, PERIODS, NOISES, EVENTS))


def held_out_combinations(k: int, seed: int = 0) -> list[Properties]:
    """``k`` combinations kept out of training (a seeded choice; every single property value
    still occurs in the training combinations, so held-out ones test composition only)."""
    if not 0 <= k < len(ALL_COMBINATIONS):
        raise ValueError(f"held-out combinations must be in [0, {len(ALL_COMBINATIONS)}), got {k}")
    rng = random.Random(seed)
    while True:
        held = rng.sample(ALL_COMBINATIONS, k)
        kept = set(ALL_COMBINATIONS) - set(held)
        if all({getattr(c, name) for c in kept} == {getattr(c, name) for c in ALL_COMBINATIONS}
               for name in PROPERTIES):
            return sorted(held)


@dataclass
class Drawn:
    """Series drawn by :func:`generate`: values ``(N, L, F)`` and each one's properties."""

    values: np.ndarray
    properties: list[Properties]


def generate(combos: Iterable[Properties], length: int = 64, features: int = 1, seed: int = 0) -> Drawn:
    """One series per combination in ``combos`` (the generator of the module docstring)."""
    combos = list(combos)
    if length < 32:
        raise ValueError(f"series length must be >= 32 (the longest period is 24 steps), got {length}")
    rng = np.random.default_rng(seed)
    n = len(combos)
    u = np.linspace(0.0, 1.0, length)[None, :, None]  # 1 L 1
    i = np.arange(length)[None, :, None]
    x = rng.uniform(*LEVEL, (n, 1, features))
    sign = np.array([{"rising": 1.0, "falling": -1.0, "flat": 0.0}[c.trend] for c in combos])[:, None, None]
    x = x + sign * rng.uniform(*SLOPE, (n, 1, features)) * u
    period = np.array([c.season or 1 for c in combos], dtype=float)[:, None, None]
    has_season = np.array([c.season > 0 for c in combos])[:, None, None]
    amp = rng.uniform(*AMPLITUDE, (n, 1, features)) * has_season
    x = x + amp * np.sin(2 * np.pi * i / period + rng.uniform(0, 2 * np.pi, (n, 1, features)))
    for j, c in enumerate(combos):
        if c.event == "none":
            continue
        lo, hi = EVENT_AT[c.event_where]
        at = int(rng.integers(int(np.ceil(lo * length)), int(np.ceil(hi * length))))
        if c.event_kind == "spike":
            x[j, at] += rng.uniform(*SPIKE, features)
        else:
            x[j, at:] += rng.choice((-1.0, 1.0)) * rng.uniform(*SHIFT, features)
    sigma = np.array([rng.uniform(*SIGMA[c.noise]) for c in combos])[:, None, None]
    x = x + sigma * rng.standard_normal(x.shape)
    return Drawn(x.astype(np.float32), combos)


def draw(n: int, combos: Sequence[Properties], length: int = 64, features: int = 1, seed: int = 0) -> Drawn:
    """``n`` series, each of a combination drawn uniformly from ``combos``."""
    if not combos:
        raise ValueError("no combinations to draw from")
    rng = random.Random(seed)
    return generate([rng.choice(combos) for _ in range(n)], length, features, seed + 1)


# -- the estimator ------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _designs(length: int) -> tuple[list[tuple[int, str, int]], list[np.ndarray]]:
    """Every candidate model: (period, event kind, position) and an orthonormal basis of its
    design matrix ``(L, p)`` (intercept, slope, season, event)."""
    u = np.linspace(0.0, 1.0, length)
    i = np.arange(length)
    base = [np.ones(length), u]
    events: list[tuple[str, int, np.ndarray | None]] = [("none", -1, None)]
    events += [("spike", j, (i == j).astype(float)) for j in range(1, length - 1)]
    events += [("shift", k, (i >= k).astype(float)) for k in range(2, length - 1)]
    keys, bases = [], []
    for p in PERIODS:
        season = [np.sin(2 * np.pi * i / p), np.cos(2 * np.pi * i / p)] if p else []
        for kind, at, col in events:
            X = np.stack(base + season + ([col] if col is not None else []), axis=1)
            keys.append((p, kind, at))
            bases.append(np.linalg.qr(X)[0])
    return keys, bases


def estimate(x: np.ndarray) -> list[Properties]:
    """The properties of each series ``(N, L, F)`` (or one ``(L, F)`` / ``(L,)``), measured as the
    module docstring says.

    Raises:
        ValueError: NaN/inf values, or a series shorter than 32 steps.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :, None]
    elif x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"series must be (N, L, F), (L, F) or (L,), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("series to measure contain NaN/inf")
    N, L, F = x.shape
    if L < 32:
        raise ValueError(f"series length must be >= 32 to measure a 24-step period, got {L}")
    keys, bases = _designs(L)
    Y = x.transpose(1, 0, 2).reshape(L, N * F)  # L (N F)
    total = (Y ** 2).reshape(L, N, F).sum(axis=(0, 2))
    n = L * F
    best = np.full(N, np.inf)
    choice = np.zeros(N, dtype=int)
    for m, Q in enumerate(bases):
        proj = ((Q.T @ Y) ** 2).reshape(Q.shape[1], N, F).sum(axis=(0, 2))
        rss = np.maximum(total - proj, 0.0)
        period, kind, _ = keys[m]
        k = (Q.shape[1] + SEASON_PENALTY * (period > 0) + EVENT_PENALTY * (kind != "none")) * F
        bic = n * np.log(rss / n + RSS_FLOOR) + k * np.log(n)
        better = bic < best
        best[better], choice[better] = bic[better], m
    out = []
    for s in range(N):
        p, kind, at = keys[choice[s]]
        y = x[s]  # L F
        # the slope in user units: refit with the raw (non-orthonormal) design
        cols = _raw_design(L, p, kind, at)
        coef, *_ = np.linalg.lstsq(cols, y, rcond=None)
        sigma = noise_level(y - cols @ coef)
        slope = float(coef[1].mean())
        trend = "rising" if slope > SLOPE_THRESHOLD else "falling" if slope < -SLOPE_THRESHOLD else "flat"
        if kind == "none":
            event = "none"
        else:
            frac = at / L
            where = "start" if frac < WHERE_EDGES[0] else "middle" if frac < WHERE_EDGES[1] else "end"
            event = f"{kind}@{where}"
        out.append(Properties(trend, p, "high" if sigma > SIGMA_THRESHOLD else "low", event))
    return out


def noise_level(resid: np.ndarray) -> float:
    """The noise standard deviation in a residual ``(L, F)``: the median absolute step-to-step
    change, scaled to a standard deviation (for white noise, the steps have std sqrt(2) sigma).
    Step changes see the noise and hardly anything slow: a fitted shape that is slightly off (a
    generated cycle a little out of shape) is not counted as noise, and the median ignores a
    missed spike."""
    d = np.diff(resid, axis=0).ravel()
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))


def _raw_design(length: int, period: int, kind: str, at: int) -> np.ndarray:
    u = np.linspace(0.0, 1.0, length)
    i = np.arange(length)
    cols = [np.ones(length), u]
    if period:
        cols += [np.sin(2 * np.pi * i / period), np.cos(2 * np.pi * i / period)]
    if kind == "spike":
        cols.append((i == at).astype(float))
    elif kind == "shift":
        cols.append((i >= at).astype(float))
    return np.stack(cols, axis=1)


def accuracy(truth: Sequence[Properties], measured: Sequence[Properties | dict | None]) -> dict[str, float]:
    """Share of series whose measured property equals the truth, per property, and ``all`` (every
    property right). ``measured`` may hold dicts with missing properties or None (a caption
    that could not be parsed): missing counts as wrong."""
    if len(truth) != len(measured):
        raise ValueError(f"{len(truth)} truths for {len(measured)} measurements")
    if not truth:
        return {}
    hits = {name: 0 for name in PROPERTIES}
    every = 0
    for t, m in zip(truth, measured):
        got = m._asdict() if isinstance(m, Properties) else (m or {})
        ok = [got.get(name) == getattr(t, name) for name in PROPERTIES]
        for name, o in zip(PROPERTIES, ok):
            hits[name] += o
        every += all(ok)
    out = {name: hits[name] / len(truth) for name in PROPERTIES}
    out["all"] = every / len(truth)
    return out

