"""Splits of the timeseries recipe's data: chronological train/validation/test parts cut
*before* windowing (so overlapping windows never leak across a boundary), sliding windows, and
what a run folder keeps of them.

Shapes: T time steps, F features, n windows, L window length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import TRANSFORMS, handle_missing, sine, to_increments, to_series
from .outliers import flag_outliers
from fusion_core.validation import check_fits


def chronological_split(T: int, fractions: Sequence[float], length: int) -> list[slice]:
    """Split ``T`` steps into consecutive train/validation/test ranges (before windowing).

    Raises:
        ValueError: fractions that do not sum to 1, or a part too short for one window.
    """
    if abs(sum(fractions) - 1) > 1e-6 or any(f < 0 for f in fractions):
        raise ValueError(f"data.split fractions must be >= 0 and sum to 1, got {list(fractions)}")
    bounds = np.round(np.cumsum([0, *fractions]) * T).astype(int)
    parts = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    for name, p, f in zip(("train", "validation", "test"), parts, fractions):
        if f > 0 and p.stop - p.start < length:
            raise ValueError(f"the {name} part has {p.stop - p.start} time steps, fewer than the window "
                             f"length {length}: use a longer series, a shorter window or other fractions")
    return parts


def windows(values: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """Sliding windows ``(n, length, F)`` of a ``(T, F)`` array.

    Raises:
        ValueError: series shorter than one window.
    """
    T = len(values)
    if T < length:
        raise ValueError(f"series of {T} time steps is shorter than the window length {length}")
    starts = np.arange(0, T - length + 1, stride)
    return np.stack([values[s : s + length] for s in starts])


@dataclass
class Splits:
    """Windows per split in user units, the column names and the training series (for scaling).
    ``parts`` (loaded series): each split's ``(values, observed)`` before windowing, what a run
    folder keeps so that evaluation needs no data source."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    columns: list[str]
    fit_data: np.ndarray  # what the scaler is fitted on: training data only
    transform: str = "none"  # windows hold increments of the user's series (see to_increments)
    anchor: np.ndarray | None = None  # (F,) the user's last training level: where sampled paths start
    parts: dict | None = None

    @property
    def feature_names(self) -> list[str]:
        """The column names, or ``"0"``, ``"1"``, ... for data given without them."""
        return list(self.columns) or [str(k) for k in range(np.asarray(self.fit_data).shape[-1])]

    def window_starts(self, name: str, stride: int = 1) -> np.ndarray | None:
        """Where each window of split ``name`` starts, on one time axis: windows of one split
        whose starts are less than a window length apart share steps, windows of different splits
        never do. ``None`` for independent samples (the sine data)."""
        if self.parts is None:
            return None
        length, offset = self.train.shape[1], 0
        for part in ("train", "validation", "test"):
            values, observed = self.parts[part]
            if part == name:
                if len(values) < length:
                    return np.zeros(0, dtype=np.int64)
                ok = windows(observed, length, stride).all(axis=(1, 2))
                return offset + np.arange(0, len(values) - length + 1, stride)[ok]
            offset += len(values) + length  # a window length of space: no window spans two splits
        raise ValueError(f"no split named {name!r}: train, validation or test")


def _window_parts(parts: dict, length: int, stride: int) -> list[np.ndarray]:
    out = []
    for name in ("train", "validation", "test"):
        values, observed = parts[name]
        if len(values) < length:
            out.append(np.zeros((0, length, values.shape[1]), dtype=np.float32))
            continue
        ok = windows(observed, length, stride).all(axis=(1, 2))
        out.append(windows(values, length, stride)[ok].astype(np.float32))
    return out


def prepare(source: str, length: int, stride: int = 1, split: Sequence[float] = (0.8, 0.1, 0.1),
            missing: str = "error", time_column: str | None = None, columns: Sequence[str] = (),
            sine_samples: int = 10000, sine_features: int = 5, seed: int = 0,
            transform: str = "none", sine_phase: float = 0.1, data=None, outliers: str = "warn",
            outlier_iqr: float = 50.0, missing_value: float | None = None, time_format: str = "") -> Splits:
    """Everything the recipe needs: windows of each split, split before windowing. With a
    ``transform`` the windows hold increments (e.g. daily log returns) of the series. ``data``
    (from Python) replaces ``source``: see :func:`to_series`. ``missing_value`` (e.g. -200 in
    UCI's Air Quality file) marks missing entries, then handled by the ``missing`` policy. Values
    far outside their column are warned about, masked or clipped (:func:`~.data.flag_outliers`)
    before anything is fitted."""
    if transform not in TRANSFORMS:
        raise ValueError(f"data.transform must be one of {TRANSFORMS}, got {transform!r}")
    if data is None and source == "sine":  # independent samples: split by sample index
        if transform != "none":
            raise ValueError("data.transform applies to loaded series, not to the built-in sine data")
        check_fits(4 * sine_samples * length * sine_features,
                   f"the sine data (data.sine_samples={sine_samples} x data.length={length} x "
                   f"data.sine_features={sine_features})")
        values = sine(sine_samples, length, sine_features, seed, sine_phase)
        n = len(values)
        b = np.round(np.cumsum([0, *split]) * n).astype(int)
        parts = [values[b[i] : b[i + 1]] for i in range(3)]
        return Splits(*parts, [f"sin{i}" for i in range(sine_features)], parts[0])
    series = to_series(data if data is not None else source, time_column, columns, time_format)
    if missing_value is not None:
        series.values = np.where(series.values == missing_value, np.nan, series.values)
    try:  # what is wrong with the data's contents, said with the data's name
        values, observed = handle_missing(series.values, missing, series.columns)
        levels = values
        if transform != "none":
            values = to_increments(values, transform, series.columns)
            observed = observed[1:] & observed[:-1]
        values, observed = flag_outliers(series, values, outliers, outlier_iqr, observed,
                                         row_offset=int(transform != "none"))
        cuts = chronological_split(len(values), split, length)
    except ValueError as e:
        name = source if data is None else f"the {type(data).__name__} given"
        raise ValueError(f"{name}: {e}") from None
    parts = {name: (values[c], observed[c]) for name, c in zip(("train", "validation", "test"), cuts)}
    anchor = None
    if transform != "none":  # the last observed level of the training part, per feature
        head = levels[: cuts[0].stop + 1]
        last = np.where(np.isfinite(head), np.arange(len(head))[:, None], -1).max(0)
        anchor = head[np.maximum(last, 0), np.arange(head.shape[1])]
    return Splits(*_window_parts(parts, length, stride), series.columns, values[cuts[0]], transform, anchor, parts)


def save_splits(splits: Splits, path: Path) -> None:
    """Keep what sampling and evaluation need of a loaded series (its split parts, columns, anchor)
    in the run folder, so neither needs the data source again."""
    arrays = {"columns": np.array(splits.columns), "transform": np.array(splits.transform)}
    if splits.anchor is not None:
        arrays["anchor"] = splits.anchor
    for name, (values, observed) in (splits.parts or {}).items():
        arrays[f"{name}_values"], arrays[f"{name}_observed"] = values, observed
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_splits(path: Path, length: int, stride: int = 1) -> Splits:
    """Inverse of :func:`save_splits`.

    Raises:
        ValueError: the file is missing or unreadable.
    """
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the run's data file ({e})") from None
    parts = {n: (z[f"{n}_values"], z[f"{n}_observed"]) for n in ("train", "validation", "test")}
    anchor = z["anchor"] if "anchor" in z else None
    return Splits(*_window_parts(parts, length, stride), [str(c) for c in z["columns"]],
                  parts["train"][0], str(z["transform"]), anchor, parts)
