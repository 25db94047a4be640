"""Mixed-modality examples for the mixed recipe: one example is a list of single-key items, in
sequence order, each naming its modality::

    [{"text": "a circle"}, {"pen": [[0.1, 0.0], [0.0, 0.1], ...]}, {"text": " drawn once"}]

The writer's items are strings; every other item's value is what that adapter's ``encode``
takes after ``numpy.asarray`` (a string stays a string, for discrete modalities such as DNA).

Sources: ``builtin:digits`` (sklearn's 8x8 digits with captions, no files), JSONL (one example per
line: the list, or ``{"example": [...]}``; a glob of shards), Parquet or a ``datasets.Dataset`` /
``hf:NAME`` with an ``example`` column (the list, or its JSON text), and Python lists of examples.
Large sources stream (``data.streaming``): read in order as training goes.
"""

from __future__ import annotations

import glob
import json
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fusion_core.engine.data import ExampleStream, load_hf

BUILTIN = "builtin:digits"


def builtin_digits(n: int, seed: int) -> list[list[dict]]:
    """``n`` captioned digits from sklearn's 8x8 set: the caption first (80%) or the image first
    (20%, captioning order), as Transfusion mixes them."""
    from fusion_core.recipes.multimodal_lm.data import caption, load_digits

    train, _ = load_digits()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        i = rng.randrange(len(train.labels))
        img = train.images[i].numpy().round(4).tolist()  # (1, 8, 8) in [0, 1]
        cap = caption(int(train.labels[i]), rng)
        out.append([{"image": img}, {"text": " " + cap}] if rng.random() < 0.2 else [{"text": cap}, {"image": img}])
    return out


def check_example(ex: Any, where: str, names: set[str]) -> list[tuple[str, Any]]:
    """An example → ``(modality, value)`` pairs, checked.

    Raises:
        ValueError: not a non-empty list; an item that is not one ``{modality: value}``; an
            unknown modality (named, with the known ones).
    """
    if isinstance(ex, dict) and set(ex) == {"example"}:
        ex = ex["example"]
    if isinstance(ex, str):
        try:
            ex = json.loads(ex)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: an example is a JSON list of {{modality: value}} items") from None
    if not isinstance(ex, (list, tuple)) or not ex:
        raise ValueError(f"{where}: an example is a non-empty list of {{modality: value}} items, got "
                         f"{type(ex).__name__}")
    out = []
    for j, item in enumerate(ex):
        if isinstance(item, dict) and len(item) == 1:
            name, value = next(iter(item.items()))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            name, value = item
        else:
            raise ValueError(f"{where}, item {j}: expected one {{modality: value}}, got {item!r:.60}")
        if name not in names:
            raise ValueError(f"{where}, item {j}: unknown modality {name!r}; this run has {sorted(names)}")
        out.append((name, value))
    return out


def _lines(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None


def _table_rows(table, name: str) -> Iterator[tuple[str, Any]]:
    cols = list(getattr(table, "column_names", None) or getattr(table, "columns", []))
    if "example" not in cols:
        raise ValueError(f"{name}: needs a column 'example' (the list of {{modality: value}} items, or its "
                         f"JSON text); columns: {cols}")
    rows = table["example"] if hasattr(table, "column_names") else table["example"].tolist()
    for i, ex in enumerate(rows):
        yield f"{name} row {i}", ex


def records(source: str, data: Any = None) -> tuple[str, callable]:
    """``(name, fresh_iterator)`` over ``(where, raw example)`` of a source (or Python ``data``).

    Raises:
        ValueError: a source that does not exist or is not one of the kinds above.
    """
    if data is not None and not isinstance(data, (str, Path)):
        if hasattr(data, "column_names"):
            return "the Dataset", lambda: _table_rows(data, "the Dataset")
        items = list(data)
        return "the examples given", lambda: ((f"example {i}", ex) for i, ex in enumerate(items))
    source = str(data if data is not None else source)
    if source.startswith("hf:"):
        ds = load_hf(source[3:])
        return source, lambda: _table_rows(ds, source)
    if source.endswith((".parquet", ".pq")):
        import pandas as pd

        if not Path(source).is_file():
            raise ValueError(f"data.source={source!r}: no such file")
        df = pd.read_parquet(source)
        return source, lambda: _table_rows(df, source)
    files = sorted(glob.glob(source)) or ([source] if Path(source).is_file() else [])
    if not files:
        raise ValueError(f"data.source={source!r}: no such file (expected {BUILTIN}, a .jsonl file or a glob of "
                         "shards, a .parquet file, or hf:NAME)")
    bad = [f for f in files if not f.endswith(".jsonl")]
    if bad:
        raise ValueError(f"data.source={source!r}: {bad[0]} is not a .jsonl file")
    return source, lambda: (r for f in files for r in _lines(Path(f)))


def split(rows: list, held_out: float, seed: int) -> tuple[list, list]:
    """A seeded share ``held_out`` of ``rows`` kept out of training."""
    held = set(random.Random(seed).sample(range(len(rows)), round(len(rows) * held_out)))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def stream(source: str, data: Any, held_out: float, encode) -> tuple[ExampleStream, ExampleStream | None]:
    """The source as a stream read during training; every k-th record held out (k = 1/held_out)."""
    name, rows = records(source, data)
    s = ExampleStream(rows, encode, name=name)
    if not held_out:
        return s, None
    return s.split(max(2, round(1 / held_out)))


def jsonable(value: Any) -> Any:
    """A decoded value as JSON holds it (arrays and tensors as nested lists)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.round(6).tolist()
    return value
