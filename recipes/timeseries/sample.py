"""``fusion sample RUN_DIR``: series in the user's units from a trained timeseries run —
unconditional windows, series longer than the window, forecasts from a history, gaps filled.

    fusion sample RUN --n 500 --out samples.csv                 # original units
    fusion sample RUN --length 400                              # longer than the training window
    fusion sample RUN --history hist.npy                        # forecast the rest of a window
    fusion sample RUN --impute gaps.npy sample.resample=5       # fill NaN; config as key=value

The generation itself is :mod:`fusion_core.generation` (``sample``, ``forecast``, ``impute``,
``sample_long``); this module adds files and the recipe's increments (``data.transform``): with a
transform the model works on increments while users see levels.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fusion_core import generation as gen
from fusion_core.engine.recipe import load_model, parse_command

from .data import from_increments, to_increments
from .train import MODALITY, run_data, window_shape


def load_run(run_dir: Path, overrides=()):
    """Config (with ``overrides``), trained model and data splits of a run."""
    from . import recipe

    c = recipe.run_config(run_dir, overrides)
    return c, load_model(run_dir, c), run_data(c, run_dir)


def sample(run_dir: Path, argv: list[str]) -> Path:
    p = argparse.ArgumentParser(prog="fusion sample RUN_DIR", description="generate series in original units "
                                "(config values as key=value, e.g. sample.steps=25 sample.sampler=ddpm)")
    p.add_argument("--n", type=int, default=100, help="number of series")
    p.add_argument("--length", type=int, help="series length (longer than the window: chained windows)")
    p.add_argument("--overlap", type=int, help="steps each new window is conditioned on (long series)")
    p.add_argument("--history", help=".npy (n, H, F) in original units: forecast the rest of a window")
    p.add_argument("--impute", help=".npy (n, L, F) in original units with NaN where missing: fill them "
                   "(L + 1 steps with data.transform, whose first step must be observed)")
    p.add_argument("--out", default="samples.npy", help="file in the run folder (.npy, .csv, .parquet)")
    p.add_argument("--increments", action="store_true",
                   help="with data.transform: save the generated increments instead of levels")
    a, overrides = parse_command(p, argv)
    c, model, splits = load_run(run_dir, overrides)
    s, diffusion = c.sample, model.diffusion[MODALITY]
    shape = window_shape(c, splits)
    tf = splits.transform
    t0 = time.time()
    if a.history or a.impute:
        values = conditional(model, c, splits, np.load(a.history or a.impute), bool(a.history), a.increments)
    elif a.length and a.length > shape[0]:
        values = gen.sample_long(model, MODALITY, a.n, a.length, shape, s.make(diffusion),
                                 s.make_conditional(diffusion), overlap=a.overlap, resample=s.resample,
                                 seed=s.seed, chunk=s.chunk, progress=True).numpy()
    else:
        values = gen.sample(model, MODALITY, a.n, shape, s.make(diffusion), seed=s.seed, chunk=s.chunk,
                            progress=True, cuda_graphs=s.cuda_graphs).numpy()
    if tf != "none" and not (a.history or a.impute or a.increments):  # paths from the last training level
        values = from_increments(values, np.broadcast_to(splits.anchor, (len(values), shape[1])), tf)
    out = Path(run_dir) / a.out
    save_array(values, out, splits.columns)
    print(f"{len(values)} series of {values.shape[1]} x {values.shape[2]} in {time.time() - t0:.1f}s → {out}")
    return out


def conditional(model, c, splits, raw: np.ndarray, is_history: bool, increments: bool) -> np.ndarray:
    """A forecast (``is_history``) or an imputation of user series ``(n, steps, F)``; with a
    transform, in levels (the first step anchors them) unless ``increments``."""
    s, diffusion = c.sample, model.diffusion[MODALITY]
    L, F = window_shape(c, splits)
    tf = splits.transform
    raw = raw.astype(np.float64)
    raw = raw[None] if raw.ndim == 2 else raw
    if raw.ndim != 3 or raw.shape[2] != F:
        raise ValueError(f"expected an array of shape (n, steps, {F}), got {raw.shape}")
    arr = raw
    if tf != "none":
        if not np.isfinite(raw[:, 0]).all():
            raise ValueError(f"with data.transform={tf} the first step of each series must be observed: "
                             "it anchors the levels")
        arr = to_increments(raw, tf, splits.columns, axis=1)
    sampler = s.make_conditional(diffusion)
    kw = dict(resample=s.resample, seed=s.seed, chunk=s.chunk, progress=True)
    if is_history:
        values = gen.forecast(model, MODALITY, arr, L, sampler, **kw)
    else:
        want = L + (tf != "none")
        if raw.shape[1] != want:
            raise ValueError(f"--impute windows must have {want} steps (the training length"
                             f"{' + 1 with data.transform' if tf != 'none' else ''}), got {raw.shape[1]}")
        values = gen.impute(model, MODALITY, arr, sampler, **kw)
    if tf != "none" and not increments:  # back to levels; observed levels come back exactly
        values = np.concatenate([raw[:, :1], from_increments(values, raw[:, 0], tf)], axis=1)
        known = np.full(values.shape, np.nan)
        known[:, : raw.shape[1]] = raw[:, : values.shape[1]]
        values = np.where(np.isfinite(known), known, values)
    return values


def save_array(values: np.ndarray, path, columns: list[str]) -> None:
    """Write ``(n, L, F)`` samples as .npy, or as long-format .csv/.parquet (series, step, columns)."""
    path = Path(path)
    if path.suffix == ".npy":
        np.save(path, values)
        return
    import pandas as pd

    n, L, F = values.shape
    df = pd.DataFrame(values.reshape(n * L, F), columns=columns)
    df.insert(0, "step", np.tile(np.arange(L), n))
    df.insert(0, "series", np.repeat(np.arange(n), L))
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix in (".parquet", ".pq"):
        df.to_parquet(path, index=False)
    else:
        raise ValueError(f"output must end in .npy, .csv or .parquet, got {path.name}")
