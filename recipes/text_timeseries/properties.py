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

:func:`estimate` measures the properties of any series by least squares over the generator's own
family: for every season (none or a period) and every event (none, a spike at step j, a shift at
step k) it fits intercept + slope + season + event to all channels at once and keeps the model
with the lowest BIC (seasons and events pay more: their period and position are searched). The
fitted slope gives the trend, the model's period the season, the event's kind and position the
event, and the step-to-step changes of the residual the noise level (:func:`noise_level`). On
clean series of the generator the true model fits exactly, so every property comes back exactly;
under the generator's noise the estimators err on well under 0.5% of series
(``tests/test_text_timeseries.py`` measures both). ``estimate(x, family="wide")`` (any family
but basic) fits the wide family's model instead: a cubic trend (its total change c1 + c2 + c3
gives the trend), each period with one or two harmonics (the second pays the season penalty
again), and the noise level corrected for the residual's lag-1 autocorrelation r
(``noise_level / sqrt(1 - r)``: AR(1) steps have variance 2 sigma^2 (1 - phi)). Clean wide
series come back exactly; under its noise the estimators err on ~1.5% of single-channel series
(correlated noise can look like a trend or a shift), well under 0.5% with 2 channels.

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
WIDE_POLY = 3  # the wide estimator's trend: a cubic
WIDE_HARMONICS = 2  # ... and cycles of up to two harmonics


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
             family: str = "basic") -> Drawn:
    """One series per combination in ``combos`` (the generator of the module docstring), of the
    series ``family``.

    Raises:
        ValueError: a length under 32, an unknown family.
    """
    combos = list(combos)
    if length < 32:
        raise ValueError(f"series length must be >= 32 (the longest period is 24 steps), got {length}")
    fam = check_family(family)
    if family != "basic":
        return Drawn(_generate_family(combos, length, features, seed, fam).astype(np.float32), combos)
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
    sigma = np.array([rng.uniform(*SIGMA[c.noise]) for c in combos])[:, None, None]
    x = x + sigma * rng.standard_normal(x.shape)
    return Drawn(x.astype(np.float32), combos)


def draw(n: int, combos: Sequence[Properties], length: int = 64, features: int = 1, seed: int = 0,
         family: str = "basic") -> Drawn:
    """``n`` series, each of a combination drawn uniformly from ``combos``."""
    if not combos:
        raise ValueError("no combinations to draw from")
    rng = random.Random(seed)
    return generate([rng.choice(combos) for _ in range(n)], length, features, seed + 1, family)


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


def _generate_family(combos: list[Properties], length: int, features: int, seed: int, fam: Family) -> np.ndarray:
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
    return x + sigma[:, None] * e


# -- the estimator ------------------------------------------------------------------------------

def _shape(wide: bool) -> tuple[int, int]:
    """(trend polynomial degree, most harmonics) of the basic or the wide estimator."""
    return (WIDE_POLY, WIDE_HARMONICS) if wide else (1, 1)


@lru_cache(maxsize=8)
def _designs(length: int, wide: bool = False) -> tuple[list[tuple[int, int, str, int]], list[np.ndarray]]:
    """Every candidate model: (period, harmonics, event kind, position) and an orthonormal basis
    of its design matrix ``(L, p)`` (:func:`_raw_design`'s columns)."""
    poly, most = _shape(wide)
    keys, bases = [], []
    for p in PERIODS:
        for h in range(1, most + 1) if p else (0,):
            for kind, at in [("none", -1)] + [("spike", j) for j in range(1, length - 1)] \
                    + [("shift", k) for k in range(2, length - 1)]:
                keys.append((p, h, kind, at))
                bases.append(np.linalg.qr(_raw_design(length, p, kind, at, poly, h))[0])
    return keys, bases


def estimate(x: np.ndarray, family: str = "basic") -> list[Properties]:
    """The properties of each series ``(N, L, F)`` (or one ``(L, F)`` / ``(L,)``), measured as the
    module docstring says, with the estimator for ``family`` (basic, or the wide one for any
    other).

    Raises:
        ValueError: NaN/inf values, a series shorter than 32 steps, an unknown family.
    """
    check_family(family)
    wide = family != "basic"
    poly, _ = _shape(wide)
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
    keys, bases = _designs(L, wide)
    Y = x.transpose(1, 0, 2).reshape(L, N * F)  # L (N F)
    total = (Y ** 2).reshape(L, N, F).sum(axis=(0, 2))
    n = L * F
    best = np.full(N, np.inf)
    choice = np.zeros(N, dtype=int)
    for m, Q in enumerate(bases):
        proj = ((Q.T @ Y) ** 2).reshape(Q.shape[1], N, F).sum(axis=(0, 2))
        rss = np.maximum(total - proj, 0.0)
        period, h, kind, _ = keys[m]
        k = (Q.shape[1] + SEASON_PENALTY * h + EVENT_PENALTY * (kind != "none")) * F
        bic = n * np.log(rss / n + RSS_FLOOR) + k * np.log(n)
        better = bic < best
        best[better], choice[better] = bic[better], m
    out = []
    for s in range(N):
        p, h, kind, at = keys[choice[s]]
        y = x[s]  # L F
        # the slope in user units: refit with the raw (non-orthonormal) design
        cols = _raw_design(L, p, kind, at, poly, h)
        coef, *_ = np.linalg.lstsq(cols, y, rcond=None)
        resid = y - cols @ coef
        sigma = noise_level(resid)
        if wide:  # AR(1) noise: its steps vary by 2 sigma^2 (1 - phi)
            r = float(np.mean([_acf1(resid[:, f]) for f in range(F)]))
            sigma /= np.sqrt(1 - min(max(r, 0.0), 0.9))
        slope = float(coef[1: poly + 1].sum(axis=0).mean())  # the total change over the window
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


def _acf1(r: np.ndarray) -> float:
    r = r - r.mean()
    d = float((r * r).sum())
    return float((r[1:] * r[:-1]).sum() / d) if d > 0 else 0.0


def _raw_design(length: int, period: int, kind: str, at: int, poly: int = 1, harmonics: int = 1) -> np.ndarray:
    """Columns: 1, u .. u^poly, the cycle's sine/cosine pairs (fundamental first, then each
    harmonic), the event's column last."""
    u = np.linspace(0.0, 1.0, length)
    i = np.arange(length)
    cols = [np.ones(length)] + [u ** k for k in range(1, poly + 1)]
    if period:
        for h in range(1, harmonics + 1):
            cols += [np.sin(2 * np.pi * h * i / period), np.cos(2 * np.pi * h * i / period)]
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

