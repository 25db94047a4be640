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

What a caption does not say is the series' *family* (:data:`FAMILIES`, ``data.family``):

    basic      the formula above: straight trends, pure sines, white noise
    wide       trends that bend (a monotone cubic through the same total change: level_f + slope_f
               * c(u), c(0) = 0, c(1) = 1, one in three straight), a second harmonic of up to half
               the cycle's amplitude, AR(1) noise (phi up to 0.6) of the same marginal sigma
    kinked     as wide, but every trend is two straight pieces meeting at a knee (in 0.35-0.65 of
               the window; the share of the change before it 0.2-0.3 away from the knee's
               position) — the held-out family of shapes: training never draws it, evaluation
               captions it (``eval.unseen_family``)

The trend property is the total change over the window, the season the cycle's fundamental
period, the noise level the marginal sigma, as in the basic family.

The estimator that measures these properties back from any series is :mod:`.estimator`.

Shapes: N series, L steps, F channels.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
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

@dataclass(frozen=True)
class Family:
    """How a family draws what captions leave open (module docstring)."""

    trends: tuple[str, ...] = ("straight",)  # straight | curved | kinked, drawn uniformly
    harmonic: float = 0.0  # second harmonic's amplitude up to this share of the fundamental's
    ar: float = 0.0  # AR(1) coefficient of the noise up to this


FAMILIES = {
    "basic": Family(),
    "wide": Family(("straight", "curved", "curved"), harmonic=0.5, ar=0.6),
    "kinked": Family(("kinked",), harmonic=0.5, ar=0.6),
}


def check_family(name: str) -> Family:
    """The :class:`Family` called ``name``.

    Raises:
        ValueError: an unknown family.
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown series family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


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


def generate(combos: Iterable[Properties], length: int = 64, features: int = 1, seed: int = 0,
             family: str = "basic", noise: bool = True) -> Drawn:
    """One series per combination in ``combos`` (the generator of the module docstring), of the
    series ``family``; ``noise=False`` draws the same series without their noise (every random
    number is still drawn: the difference of the two draws is the noise alone).

    Raises:
        ValueError: a length under 32, an unknown family.
    """
    combos = list(combos)
    if length < 32:
        raise ValueError(f"series length must be >= 32 (the longest period is 24 steps), got {length}")
    fam = check_family(family)
    if family != "basic":
        return Drawn(_generate_family(combos, length, features, seed, fam, noise).astype(np.float32), combos)
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
        _add_event(x[j], c, rng)
    sigma = np.array([rng.uniform(*SIGMA[c.noise]) for c in combos])[:, None, None] * noise
    x = x + sigma * rng.standard_normal(x.shape)
    return Drawn(x.astype(np.float32), combos)


def draw(n: int, combos: Sequence[Properties], length: int = 64, features: int = 1, seed: int = 0,
         family: str = "basic", noise: bool = True) -> Drawn:
    """``n`` series, each of a combination drawn uniformly from ``combos`` (``noise``: as
    :func:`generate`)."""
    if not combos:
        raise ValueError("no combinations to draw from")
    rng = random.Random(seed)
    return generate([rng.choice(combos) for _ in range(n)], length, features, seed + 1, family, noise)


def _add_event(y: np.ndarray, c: Properties, rng: np.random.Generator) -> None:
    """Add ``c``'s event to one series ``y`` ``(L, F)`` in place (a spike at one step, or a
    shift from one step on, placed in the captioned third)."""
    if c.event == "none":
        return
    length, features = y.shape
    lo, hi = EVENT_AT[c.event_where]
    at = int(rng.integers(int(np.ceil(lo * length)), int(np.ceil(hi * length))))
    if c.event_kind == "spike":
        y[at] += rng.uniform(*SPIKE, features)
    else:
        y[at:] += rng.choice((-1.0, 1.0)) * rng.uniform(*SHIFT, features)


def trend_curve(kind: str, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A monotone curve ``c(u)`` over ``u`` in [0, 1] with ``c(0) = 0`` and ``c(1) = 1``:
    straight, curved (``u + k2 u (u - 1) + k3 u (u - 1) (2 u - 1)``, a cubic the wide estimator
    fits exactly, bent by at least 0.3 in one coefficient) or kinked (two straight pieces)."""
    return _trend_curves(np.array([kind]), u, rng)[0]


def _trend_curves(kinds: np.ndarray, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """:func:`trend_curve` for each of ``kinds`` ``(n,)`` at once: ``(n, L)``."""
    unknown = set(kinds.tolist()) - {"straight", "curved", "kinked"}
    if unknown:
        raise ValueError(f"unknown trend shape(s) {sorted(unknown)}")
    out = np.broadcast_to(u, (len(kinds), len(u))).copy()
    todo = np.flatnonzero(kinds == "curved")
    while len(todo):  # draw the cubic's coefficients until each curve is monotone and bent
        k2, k3 = rng.uniform(-1, 1, (len(todo), 1)), rng.uniform(-0.6, 0.6, (len(todo), 1))
        y = u + k2 * u * (u - 1) + k3 * u * (u - 1) * (2 * u - 1)
        ok = (np.maximum(abs(k2), abs(k3))[:, 0] > 0.3) & (np.diff(y, axis=1) >= 0).all(axis=1)
        out[todo[ok]] = y[ok]
        todo = todo[~ok]
    kinked = np.flatnonzero(kinds == "kinked")
    knee = rng.uniform(0.35, 0.65, (len(kinked), 1))
    before = knee + rng.choice((-1.0, 1.0), (len(kinked), 1)) * rng.uniform(0.2, 0.3, (len(kinked), 1))
    out[kinked] = np.where(u < knee, u / knee * before, before + (u - knee) / (1 - knee) * (1 - before))
    return out


def _generate_family(combos: list[Properties], length: int, features: int, seed: int, fam: Family,
                     noise: bool = True) -> np.ndarray:
    """Series of a family other than basic (module docstring)."""
    rng = np.random.default_rng(seed)
    n = len(combos)
    u = np.linspace(0.0, 1.0, length)
    i = np.arange(length)[None, :, None]
    kinds = np.array(fam.trends)[rng.integers(len(fam.trends), size=n * features)]
    curve = _trend_curves(kinds, u, rng).reshape(n, features, length).transpose(0, 2, 1)  # n L F
    sign = np.array([{"rising": 1.0, "falling": -1.0, "flat": 0.0}[c.trend] for c in combos])[:, None, None]
    x = rng.uniform(*LEVEL, (n, 1, features)) + sign * rng.uniform(*SLOPE, (n, 1, features)) * curve
    period = np.array([c.season or 1 for c in combos], dtype=float)[:, None, None]
    amp = rng.uniform(*AMPLITUDE, (n, 1, features)) * np.array([c.season > 0 for c in combos])[:, None, None]
    second = amp * rng.uniform(0, fam.harmonic, (n, 1, features))
    x = x + amp * np.sin(2 * np.pi * i / period + rng.uniform(0, 2 * np.pi, (n, 1, features)))
    x = x + second * np.sin(4 * np.pi * i / period + rng.uniform(0, 2 * np.pi, (n, 1, features)))
    for j, c in enumerate(combos):
        _add_event(x[j], c, rng)
    sigma = np.array([rng.uniform(*SIGMA[c.noise]) for c in combos])[:, None]
    phi = rng.uniform(0, fam.ar, (n, 1))
    z = rng.standard_normal((n, length, features))
    e = np.empty_like(z)
    e[:, 0] = z[:, 0]
    for t in range(1, length):  # stationary AR(1) of unit variance
        e[:, t] = phi * e[:, t - 1] + np.sqrt(1 - phi ** 2) * z[:, t]
    return x + sigma[:, None] * e * noise


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

