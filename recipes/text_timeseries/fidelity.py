"""Fidelity: what a caption does *not* constrain, generated against real.

The recipe's adherence scores ask whether a series has its caption's properties. These measures
ask whether it has them *the way real series do*: a series that satisfies "a spike near the end"
with two spikes, or with a spike three times the data's height, passes adherence and fails here.

Each series is fitted by least squares to the model its caption names (intercept + slope, the
captioned cycle, the captioned event — its position searched within the captioned third of the
window, as the generator places it; for a family other than basic, the wide estimator's model:
a cubic trend and the cycle with its second harmonic), and from the fit:

- **extra outliers**: residual points whose robust z-score (median / MAD of that residual)
  exceeds :data:`OUTLIER_Z` — spikes, dips or jumps the caption does not describe; and of
  them, those **away from the event** (more than :data:`EVENT_REACH` steps from the fitted
  event's position): a second event, rather than the described one drawn in a shape the fit
  does not have (a level shift ramped over two steps leaves an outlier next to it);
- **event size**: the fitted spike height or shift size (absolute, mean over channels);
- **cycle amplitude**: ``sqrt(a^2 + b^2)`` of the fitted sine/cosine pair (the fundamental's);
- **residual autocorrelation**: lag-1 autocorrelation of the residual (white noise: ~0), and
  the residual's noise level (:func:`.estimator.noise_level`).

Each measure has a second, independent estimate (:func:`second_opinion`), so a blind spot shared
by the fit and the generator shows up as a disagreement rather than as a good score:

- extra outliers by a **local rule with no global model** (:func:`local_outliers`): each step
  predicted from its two neighbours each side by a local quadratic, a Hampel identifier on the
  misses; the steps within 2 of the described event's position are left to the event. (A
  Hampel filter on the raw series — median of 7 steps — was tried first: it missed 6 in 10
  planted spikes, since a short cycle's local spread hides a spike of 2–3.)
- event size with no global fit: a spike's height as its miss by the local quadratic of its two
  neighbours each side; a shift as the difference of the medians of the 8 steps after and before it, less the trend
  those 8 steps carry (the median step-to-step change);
- cycle amplitude from **moments**: ``sqrt(2 (var(x - trend - event) - sigma^2))`` — a sine of
  amplitude A has variance A^2 / 2 (no sine/cosine projection);
- residual autocorrelation from the **periodogram**: the circular lag-1 autocorrelation
  ``sum_k P_k cos(2 pi k / L) / sum_k P_k``.

``tests/test_text_timeseries.py`` checks both estimates against planted truth (series of the
generator with added outliers, known sizes and amplitudes, AR(1) noise of known phi).

Shapes: N series, L steps, F channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from . import estimator as E
from . import properties as P
from .estimator import acf1

OUTLIER_Z = 5.0  # robust z-score of a residual point counted as an outlier (Gaussian: p ~ 6e-7 a point)
LOCAL_HALF = 2  # the second method's neighbourhood: 2 steps each side
LOCAL_Z = 5.0
EVENT_REACH = 2  # steps each side of a described event's position that the second method leaves to it
LOCAL = 8  # steps each side for the local shift estimate
MEASURES = ("extra_outliers", "extra_away", "event_size", "amplitude", "resid_acf1", "noise")
RATES = ("extra_outliers", "extra_away")  # counts per series, reported as the share of series with any


@dataclass
class Fidelity:
    """Per series (``N``): what :func:`measure` found (``nan`` where a measure does not apply:
    no event, no cycle)."""

    extra_outliers: np.ndarray  # count of residual outliers besides the described event
    extra_away: np.ndarray  # of them, those more than EVENT_REACH steps from the event
    event_size: np.ndarray  # |spike height| or |shift size|, mean over channels
    amplitude: np.ndarray  # cycle amplitude, mean over channels
    resid_acf1: np.ndarray  # lag-1 autocorrelation of the residual, mean over channels
    noise: np.ndarray  # the residual's noise level
    event_at: np.ndarray = field(repr=False, default=None)  # fitted event position (-1: none)
    resid: np.ndarray = field(repr=False, default=None)  # (N, L, F)
    fitted: np.ndarray = field(repr=False, default=None)  # trend + event part of the fit (N, L, F)
    start: np.ndarray = field(repr=False, default=None)  # the fitted trend at the first step, mean over channels
    rise: np.ndarray = field(repr=False, default=None)  # the fitted trend's last step less its first, mean over channels


def _where_range(where: str, L: int) -> range:
    """Event positions the estimator calls ``where`` (:data:`.estimator.WHERE_EDGES`)."""
    a, b = E.WHERE_EDGES
    lo, hi = {"start": (0.0, a), "middle": (a, b), "end": (b, 1.0)}[where]
    first = max(int(np.ceil(lo * L)), 2)
    last = min(int(np.ceil(hi * L)), L - 1)
    return range(first, max(last, first + 1))


def _fit(y: np.ndarray, p: P.Properties, poly: int = 1, harmonics: int = 1):
    """Least-squares fit of ``y`` ``(L, F)`` to the caption's model. Returns (coef, design, at)."""
    L = y.shape[0]
    kind = p.event_kind
    candidates = [-1] if kind == "none" else list(_where_range(p.event_where, L))
    best = None
    for at in candidates:
        X = E._raw_design(L, p.season, kind if at >= 0 else "none", at, poly, harmonics)
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        rss = float(((y - X @ coef) ** 2).sum())
        if best is None or rss < best[0]:
            best = (rss, coef, X, at)
    return best[1], best[2], best[3]


def _leave_to_event(flagged: np.ndarray, at: int) -> None:
    """Unflag, in place, the steps within :data:`EVENT_REACH` of the described event at ``at``."""
    flagged[max(at - EVENT_REACH, 0): at + EVENT_REACH + 1] = False


def robust_z(r: np.ndarray) -> np.ndarray:
    """``(r - median) / (1.4826 MAD)`` along axis 0 (per channel); a zero MAD counts as tiny."""
    med = np.median(r, axis=0, keepdims=True)
    mad = 1.4826 * np.median(np.abs(r - med), axis=0, keepdims=True)
    return (r - med) / np.maximum(mad, 1e-9)


def measure(x: np.ndarray, props: Sequence[P.Properties], family: str = "basic") -> Fidelity:
    """The module docstring's measures of each series ``(N, L, F)`` against its caption's
    properties (from the caption, not measured from the series), fitted with the estimator's
    model for the series ``family``.

    Raises:
        ValueError: shapes that disagree, NaN/inf values, an unknown family.
    """
    P.check_family(family)
    poly, harmonics = E._shape(family != "basic")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or len(x) != len(props):
        raise ValueError(f"need series (N, L, F) and N properties, got {x.shape} and {len(props)}")
    if not np.isfinite(x).all():
        raise ValueError("series to measure contain NaN/inf")
    N, L, F = x.shape
    out = {k: np.full(N, np.nan) for k in MEASURES}
    at_all = np.full(N, -1)
    start, rise = np.zeros(N), np.zeros(N)
    resid = np.zeros_like(x)
    fitted = np.zeros_like(x)
    for s, p in enumerate(props):
        y = x[s]
        coef, X, at = _fit(y, p, poly, harmonics)
        r = y - X @ coef
        resid[s] = r
        keep = list(range(poly + 1)) + ([X.shape[1] - 1] if at >= 0 else [])  # trend and event columns
        fitted[s] = X[:, keep] @ coef[keep]
        start[s] = float(coef[0].mean())  # the design's u runs 0 .. 1: trend(0) = intercept
        rise[s] = float(coef[1: poly + 1].sum(axis=0).mean())  # trend(1) - trend(0)
        flagged = (np.abs(robust_z(r)) > OUTLIER_Z).any(axis=1)
        out["extra_outliers"][s] = float(flagged.sum())
        if at >= 0:
            _leave_to_event(flagged, at)
            out["event_size"][s] = float(np.abs(coef[-1]).mean())
            at_all[s] = at
        out["extra_away"][s] = float(flagged.sum())
        if p.season:
            out["amplitude"][s] = float(np.hypot(coef[poly + 1], coef[poly + 2]).mean())
        out["resid_acf1"][s] = float(np.mean([acf1(r[:, f]) for f in range(F)]))
        out["noise"][s] = E.noise_level(r)
    return Fidelity(**out, event_at=at_all, resid=resid, fitted=fitted, start=start, rise=rise)


def acf1_spectral(r: np.ndarray) -> float:
    """The circular lag-1 autocorrelation from the periodogram (the second method)."""
    r = r - r.mean()
    P_k = np.abs(np.fft.rfft(r)) ** 2
    k = np.arange(len(P_k))
    w = np.where((k == 0) | ((len(r) % 2 == 0) & (k == len(P_k) - 1)), 1.0, 2.0)  # one-sided spectrum
    tot = float((w * P_k).sum())
    return float((w * P_k * np.cos(2 * np.pi * k / len(r))).sum() / tot) if tot > 0 else 0.0


def _loo_weights(half: int, degree: int) -> np.ndarray:
    """Weights predicting a step from its ``half`` neighbours each side (itself left out) by a
    local polynomial of ``degree``."""
    off = np.array([o for o in range(-half, half + 1) if o != 0], dtype=float)
    w = np.linalg.pinv(np.vander(off, degree + 1, increasing=True))[0]  # the fit's value at 0
    return np.insert(w, half, 0.0)


def local_outliers(y: np.ndarray, half: int = LOCAL_HALF, z: float = LOCAL_Z) -> np.ndarray:
    """Steps ``(L,)`` where any channel of ``y`` ``(L, F)`` is an outlier by a Hampel-style rule
    with no global model: each step predicted from its ``half`` neighbours each side by a local
    quadratic (itself left out), and flagged when its miss is more than ``z`` robust standard
    deviations (median / MAD over the series) from the typical miss. A spike misses by its
    height; a level shift flags the steps next to it."""
    return (np.abs(robust_z(_local_miss(y, half))) > z).any(axis=1)


def _local_miss(y: np.ndarray, half: int = LOCAL_HALF) -> np.ndarray:
    """Each step of ``y`` ``(L, F)`` less its prediction from ``half`` neighbours each side by a
    local quadratic (itself left out)."""
    pad = np.pad(y, ((half, half), (0, 0)), mode="reflect", reflect_type="odd")
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * half + 1, axis=0)  # L F W
    return y - (win * _loo_weights(half, 2)).sum(-1)


def second_opinion(x: np.ndarray, props: Sequence[P.Properties], fid: Fidelity) -> dict[str, np.ndarray]:
    """The independent estimates of the module docstring (``fid`` gives only the event position
    and, for the amplitude, the trend + event part to remove)."""
    x = np.asarray(x, dtype=np.float64)
    N, L, F = x.shape
    out = {k: np.full(N, np.nan) for k in ("extra_outliers", "event_size", "amplitude", "resid_acf1")}
    for s, p in enumerate(props):
        y, at = x[s], int(fid.event_at[s])
        flagged = local_outliers(y)
        if at >= 0:
            _leave_to_event(flagged, at)
        out["extra_outliers"][s] = float(flagged.sum())
        if p.event_kind == "spike" and at >= 0:
            out["event_size"][s] = float(np.abs(_local_miss(y)[at]).mean())
        elif p.event_kind == "shift" and at >= 0:
            w = min(LOCAL, at, L - at)
            step = np.median(np.diff(y, axis=0), axis=0)  # the local trend per step
            jump = np.median(y[at: at + w], axis=0) - np.median(y[at - w: at], axis=0) - step * w
            out["event_size"][s] = float(np.abs(jump).mean())
        if p.season:
            rest = y - fid.fitted[s]
            var = rest.var(axis=0) - fid.noise[s] ** 2  # the noise level of the fit's residual
            out["amplitude"][s] = float(np.sqrt(2 * np.maximum(var, 0)).mean())
        out["resid_acf1"][s] = float(np.mean([acf1_spectral(fid.resid[s][:, f]) for f in range(F)]))
    return out


def caption_groups(props: Sequence[P.Properties]) -> dict[str, list[int]]:
    """Series indices per caption group: by event kind, by whether a cycle is described and by
    the noise level (a flaw of the smooth part shows against low noise, not high)."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(props):
        groups.setdefault({"none": "no event", "spike": "spike", "shift": "level shift"}[p.event_kind], []).append(i)
        groups.setdefault("cycle" if p.season else "no cycle", []).append(i)
        groups.setdefault(f"{p.noise} noise", []).append(i)
    order = ("no event", "spike", "level shift", "cycle", "no cycle", "low noise", "high noise")
    return {g: groups[g] for g in order if g in groups}


def _median(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else float("nan")


def compare(real: np.ndarray, fake: np.ndarray, props: Sequence[P.Properties], family: str = "basic") -> dict:
    """Every measure, both methods, generated vs real series sharing captions (``props``): per
    caption group and overall, the extra-outlier rate (share of series with any) and the
    medians of the others; plus each measure's per-series values for plots."""
    fr, ff = measure(real, props, family), measure(fake, props, family)
    sr, sf = second_opinion(real, props, fr), second_opinion(fake, props, ff)
    groups = {"all": list(range(len(props))), **caption_groups(props)}
    table = {}
    for g, idx in groups.items():
        row = {"n": len(idx)}
        for name in MEASURES:
            a, b = getattr(fr, name)[idx], getattr(ff, name)[idx]
            if name in RATES:
                row[name] = {"real": float((a > 0).mean()), "generated": float((b > 0).mean())}
            else:
                row[name] = {"real": _median(a), "generated": _median(b)}
            if name in sr:
                a2, b2 = sr[name][idx], sf[name][idx]
                if name == "extra_outliers":
                    row[name]["second"] = {"real": float((a2 > 0).mean()), "generated": float((b2 > 0).mean())}
                else:
                    row[name]["second"] = {"real": _median(a2), "generated": _median(b2)}
        table[g] = row
    per_series = {name: {"real": getattr(fr, name).tolist(), "generated": getattr(ff, name).tolist()}
                  for name in MEASURES}
    return {"groups": table, "per_series": per_series}


def ratio(row: dict, name: str, second: bool = False) -> float:
    """generated / real of one measure in one group's row (``nan`` where real is 0 or missing)."""
    d = row[name]["second"] if second else row[name]
    return d["generated"] / d["real"] if d["real"] else float("nan")
