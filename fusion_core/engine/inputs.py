"""What the recipes' Python entries take as data — ``recipe.run(..., data=...)`` — coerced the same
way in every recipe, so a tensor, an array, a DataFrame, a ``datasets.Dataset``, a list of tuples
and a list of dicts mean the same thing everywhere (docs/python-api.md has the table).

- :func:`as_array` — numbers: a NumPy array, a torch tensor (any dtype but bool/complex), nested
  lists. Strings and booleans are refused, not converted.
- :func:`as_records` — examples with named fields: a list of dicts, a list of tuples (fields in
  order), a dict of columns, a pandas DataFrame, a ``datasets.Dataset``.
- :func:`as_image` — a ``(C, H, W)`` float image from a tensor, an array or nested lists.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..validation import numeric_array


def as_array(value: Any, key: str = "data", dtype=np.float64) -> np.ndarray:
    """Numbers as a ``dtype`` array.

    Raises:
        TypeError: strings, booleans, objects or ragged rows (named with ``key``).
    """
    return numeric_array(value, key, dtype=dtype)


def _columns(data: Any) -> list[str] | None:
    cols = getattr(data, "column_names", None)  # datasets.Dataset
    if cols is None and hasattr(data, "columns") and hasattr(data, "to_numpy"):  # pandas.DataFrame
        cols = [str(c) for c in data.columns]
    return list(cols) if cols is not None else None


def as_records(data: Any, fields: Sequence[str], key: str = "data") -> list[dict]:
    """Examples with the named ``fields`` as a list of dicts (extra fields dropped).

    Raises:
        ValueError: a missing field (named, with what the data has).
        TypeError: data of another kind, or an item that is neither a dict nor a tuple of
            ``len(fields)`` values.
    """
    fields = list(fields)
    cols = _columns(data)
    if cols is not None:
        missing = [f for f in fields if f not in cols]
        if missing:
            raise ValueError(f"{key} needs columns {fields}; missing {missing} (it has {cols})")
        columns = {f: list(data[f]) for f in fields}
        return [dict(zip(fields, values)) for values in zip(*columns.values())]
    if isinstance(data, Mapping):
        missing = [f for f in fields if f not in data]
        if missing:
            raise ValueError(f"{key} needs keys {fields}; missing {missing} (it has {sorted(data)})")
        lengths = {f: len(data[f]) for f in fields}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{key}: columns of different lengths {lengths}")
        return [dict(zip(fields, values)) for values in zip(*(data[f] for f in fields))]
    if isinstance(data, (str, bytes)) or not isinstance(data, (Sequence, np.ndarray)) and not hasattr(data, "__iter__"):
        raise TypeError(f"{key} must be a list of examples, a dict of columns, a DataFrame or a datasets.Dataset, "
                        f"got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, Mapping):
            missing = [f for f in fields if f not in item]
            if missing:
                raise ValueError(f"{key}[{i}] needs keys {fields}; missing {missing}")
            out.append({f: item[f] for f in fields})
        elif isinstance(item, (tuple, list)) and len(item) == len(fields):
            out.append(dict(zip(fields, item)))
        else:
            raise TypeError(f"{key}[{i}]: expected a dict with {fields} or a tuple of {len(fields)} values "
                            f"({', '.join(fields)}), got {type(item).__name__}")
    return out


def as_image(value: Any, key: str = "image") -> torch.Tensor:
    """A ``(C, H, W)`` float32 image from a tensor, a NumPy array or nested lists.

    Raises:
        TypeError: values that are not numbers.
        ValueError: another rank.
    """
    if isinstance(value, torch.Tensor) and value.dtype.is_floating_point:
        x = value.detach().cpu().float()
    else:
        x = torch.from_numpy(as_array(value, key, dtype=np.float32))
    if x.ndim != 3:
        raise ValueError(f"{key} must have shape (C, H, W), got {tuple(x.shape)}")
    return x
