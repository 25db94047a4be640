"""Reading tables for the time-series recipes: CSV (comma, or semicolon with decimal commas as
European exports such as UCI's Air Quality file write them) and parquet files → DataFrames, and
DataFrames → :class:`Series`, with columns matched by name (exactly, or ignoring case and
punctuation: ``CO(GT)`` and ``CO_GT`` are one column) and a number that marks missing values.

Shapes: T time steps, F features.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class Series:
    """A multivariate series ``values`` ``(T, F)`` (NaN = missing), its column names and, when
    known, each row's time stamp (for messages that name a row)."""

    values: np.ndarray
    columns: list[str]
    times: np.ndarray | None = None

    def where(self, row: int) -> str:
        return f"row {row}" + (f" ({self.times[row]})" if self.times is not None else "")


def _loose(name) -> str:
    """A column name without case and punctuation: ``CO(GT)`` and ``co_gt`` are ``co_gt``."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")


def match_columns(available: Sequence, wanted: Sequence[str], what: str = "columns") -> list:
    """Each wanted name as the table spells it: exactly, else the one column whose name differs
    only in case and punctuation (copies of one public file rename ``CO(GT)`` to ``CO_GT``).

    Raises:
        ValueError: names that match no column, or more than one, with the columns there are.
    """
    loose: dict[str, list] = {}
    for c in available:
        loose.setdefault(_loose(c), []).append(c)
    out, unknown = [], []
    for w in wanted:
        if w in available:
            out.append(w)
        elif len(loose.get(_loose(w), [])) == 1:
            out.append(loose[_loose(w)][0])
        else:
            unknown.append(w)
    if unknown:
        raise ValueError(f"{what} {unknown} not in the data; columns: {list(available)}")
    return out


def parse_times(values, time_format: str = ""):
    """Date strings → pandas timestamps. ``time_format``: "" (pandas infers the format from the
    first value, and reads an ambiguous 03/04 month first), ``"dayfirst"`` (03/04 is 3 April), or
    a ``strftime`` format such as ``"%d/%m/%Y %H:%M"`` that every value must match.

    Raises:
        ValueError: a value that is not a date (in the format, when one is given).
    """
    import warnings

    import pandas as pd

    exact = time_format not in ("", "dayfirst")  # a strftime format every value must match
    kwargs = {"format": time_format} if exact else {"dayfirst": time_format == "dayfirst"}
    with warnings.catch_warnings():
        # pandas warns when it infers day-first dates from a value like 14/02/2016: the dates are read
        # right then, and data.time_format says it outright (the warning would name pandas' keyword)
        warnings.filterwarnings("ignore", message="Parsing dates in .* format when dayfirst=", category=UserWarning)
        try:
            return pd.to_datetime(values, **kwargs)
        except (ValueError, TypeError) as e:
            how = f" in the format {time_format!r}" if exact else ""
            said = str(e).split(". You might")[0].splitlines()[0]  # pandas' own advice names its keywords
            raise ValueError(f"values that are not dates{how} ({said}); data.time_format names the format: "
                             "'dayfirst' or a strftime format such as '%d/%m/%Y %H:%M'") from None


def from_dataframe(df, time_column: str | None = None, columns: Sequence[str] = (), time_format: str = "") -> Series:
    """A pandas DataFrame → :class:`Series`, sorted by ``time_column`` (which is dropped, its
    dates read by :func:`parse_times` with ``time_format``); names matched by :func:`match_columns`.

    Raises:
        ValueError: unknown column names, dates that do not parse, or non-numeric columns among
            the features.
    """
    import pandas as pd

    times = None
    if time_column:
        time_column = match_columns(list(df.columns), [time_column], "time column")[0]
        try:
            stamps = parse_times(df[time_column], time_format)
        except ValueError as e:
            raise ValueError(f"time column {time_column!r} holds {e}") from None
        df = df.assign(**{time_column: stamps}).sort_values(time_column, kind="stable")
        times = df[time_column].astype(str).to_numpy()
        df = df.drop(columns=[time_column])
    if columns:
        df = df[match_columns(list(df.columns), list(columns))]
    if len(df) == 0:
        raise ValueError(f"the data has columns {list(df.columns)} but no rows")
    if len(df.columns) == 0:
        raise ValueError("the data has no feature columns")
    non_numeric = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise ValueError(f"non-numeric columns {non_numeric}: select numeric ones with data.columns=[...] "
                         "or name the date column with data.time_column")
    return Series(df.to_numpy(dtype=np.float64), [str(c) for c in df.columns], times)


MAX_COLUMNS = 10_000  # a time step is one position of F features: wider tables are not time series


def read_table(path: Path, columns: Sequence[str] = ()):
    """A CSV or parquet file as a DataFrame (only ``columns`` and the time column when named);
    what the file is not, said in one line. A header wider than :data:`MAX_COLUMNS` is refused
    before the rows are parsed. A CSV whose header has more semicolons than commas is read as a
    European export (``;`` between fields, decimal commas); unnamed columns with no values and
    empty rows at the end of the file (both in UCI's Air Quality file) are dropped."""
    import pandas as pd

    if path.suffix == ".csv":
        head = path.read_bytes()[:1 << 16]
        try:
            head.decode("utf-8")
            binary = b"\x00" in head
        except UnicodeDecodeError as e:
            binary = e.start < len(head) - 4  # not a multi-byte character cut at the end of the sample
        if binary:
            raise ValueError("not a text CSV file (NUL bytes or bytes that are not UTF-8: a binary file?)")
        with open(path, "rb") as f:
            header = f.readline(1 << 24)
        european = header.count(b";") > header.count(b",")
        sep, decimal = (";", ",") if european else (",", ".")
        width = header.count(sep.encode()) + 1 if header.strip() else 0
        if width > MAX_COLUMNS and not columns:
            raise ValueError(f"the header names {width} columns, more than the {MAX_COLUMNS} a time series of "
                             "per-step positions can use: pick some with data.columns=[...]")
        try:
            df = pd.read_csv(path, sep=sep, decimal=decimal,
                             usecols=(lambda c: c in set(columns)) if columns and width > MAX_COLUMNS else None)
        except pd.errors.EmptyDataError:
            raise ValueError("the file is empty (expected a header row, then one row per time step)") from None
        except UnicodeDecodeError:
            raise ValueError("not a text CSV file (it does not decode as UTF-8: a binary file?)") from None
        except pd.errors.ParserError as e:
            raise ValueError(f"not a well-formed CSV ({str(e).strip().splitlines()[0]})") from None
        empty = [c for c in df.columns if str(c).startswith("Unnamed:") and df[c].isna().all()]
        df = df.drop(columns=empty)
        filled = np.nonzero(df.notna().any(axis=1).to_numpy())[0]
        return df.iloc[: filled[-1] + 1 if len(filled) else 0]
    if path.suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except Exception as e:  # pyarrow raises its own error types
            raise ValueError(f"not a readable parquet file ({type(e).__name__})") from None
    raise ValueError(f"unsupported file type {path.suffix!r} (use .csv, .parquet or .npy)")


def with_file(path: Path, fn):
    """``fn()``, with any ``ValueError`` it raises prefixed by the file's name."""
    try:
        return fn()
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
