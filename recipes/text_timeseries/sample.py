"""``fusion sample RUN_DIR``: series from captions, captions of series.

    fusion sample RUN --caption "It climbs, with a cycle every 12 steps, little noise and no events."
    fusion sample RUN --caption "..." --n 4 sample.guidance=5      # 4 series per caption
    fusion sample RUN --series series.npy                           # caption (n, L, F) / (L,) series

Series go to ``RUN/samples/series.npy`` ``(captions, n, L, F)`` and ``series.png``, each printed
with the properties the estimators measure in it. Generation itself is
:mod:`fusion_core.generation` (``generate_span``, ``caption``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fusion_core import generation as gen
from fusion_core.engine.recipe import load_model, parse_command

from .data import Pairs, check_pair
from .estimator import estimate
from .report import series_grid
from .train import MODALITY


def load_run(run_dir: Path, overrides=()):
    """Config (with ``overrides``) and trained model of a run."""
    from . import recipe

    c = recipe.run_config(run_dir, overrides)
    return c, load_model(run_dir, c)


def read_series(path: str, length: int) -> np.ndarray:
    """``(n, L, F)`` series from a .npy file holding ``(n, L, F)``, ``(L, F)`` or ``(L,)``."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a NumPy .npy array ({e})") from None
    if x.ndim < 3:
        x = x.reshape(1, x.shape[0], -1)
    return np.stack([check_pair("-", s, length, f"{path}[{i}]") for i, s in enumerate(x)])


def sample(run_dir: Path, argv: list[str]):
    p = argparse.ArgumentParser(prog="fusion sample RUN_DIR", description="series from captions, captions of "
                                "series (config values as key=value, e.g. sample.guidance=5)")
    p.add_argument("--caption", action="append", default=[], help="a caption (repeat for several)")
    p.add_argument("--n", type=int, default=3, help="series per caption")
    p.add_argument("--series", help=".npy of series to caption: (n, L, F), (L, F) or (L,)")
    a, overrides = parse_command(p, argv)
    if not (a.caption or a.series) or a.n < 1:
        p.error("give --caption (text → series) or --series (series → text); --n >= 1")
    c, model = load_run(run_dir, overrides)
    s = c.sample
    L, F = c.data.length, model.adapters[MODALITY].features
    if a.series:
        values = read_series(a.series, L)
        caps = gen.caption(model, MODALITY, values, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                           top_k=s.top_k or None, seed=s.seed)
        for i, cap in enumerate(caps):
            print(f"series {i}: {cap}")
        return caps
    prompts = [cap for cap in a.caption for _ in range(a.n)]
    drawn = gen.generate_span(model, prompts, MODALITY, (L, F), s.make(model.diffusion[MODALITY]),
                              s.guidance_args, seed=s.seed).numpy()
    out = Path(run_dir) / "samples"
    out.mkdir(exist_ok=True)
    drawn = drawn.reshape(len(a.caption), a.n, L, F)
    np.save(out / "series.npy", drawn)
    series_grid(Pairs(a.caption, drawn[:, 0]), drawn, out / "series.png")
    for cap, group in zip(a.caption, drawn):
        print(f"{cap!r}:")
        for j, props in enumerate(estimate(group, c.data.family)):
            print(f"  series {j}: measured {props._asdict()}")
    print(f"saved {out / 'series.npy'} and {out / 'series.png'}")
    return drawn
