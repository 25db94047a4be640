"""``fusion evaluate RUN_DIR``: both directions and text-conditioned forecasting, measured by the
estimators of :mod:`.estimator`.

- **text → series**: a series from each test caption (CFG, ``eval.sample``); each generated
  series' properties measured and compared with the caption's — per property and all four at
  once, for seen and held-out combinations; plus the discriminative score of the generated series
  against the real test series that share their captions.
- **series → text**: each test series captioned (greedy); the caption parsed back
  (:func:`.captions.parse`) and compared with the series' properties; also on series of a family
  of shapes training never drew (``eval.unseen_family``, synthetic data: kinked trends).
- **text-conditioned forecasting**: the first ``eval.history`` steps of a test series, forecast
  to its full length with its caption and without; the whole forecast window's properties
  compared with the truth (events "near the end" happen after the history: only the caption
  can tell them).

    fusion evaluate RUN
    fusion evaluate RUN eval.sample.guidance=0 --out nocfg       # ablation: writes RUN/nocfg/
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fusion_core import generation as gen
from fusion_core.model import FusionModel
from fusion_core.engine.recipe import machine_description, parse_command, setup_logging

from ..timeseries.metrics import discriminative_score
from . import captions as C
from . import estimator as E
from . import fidelity as FI
from . import properties as P
from .captions import parse
from .config import TTSConfig
from .data import Pairs
from .report import fidelity_plot, forecast_plot, series_grid, write_report
from .sample import load_run
from .train import MODALITY, test_pairs

log = logging.getLogger("fusion_core")
DISC_MIN_PAIRS = 4  # the discriminative classifier's least windows per side


def text_to_series(model: FusionModel, c: TTSConfig, captions: list[str], shape, seed: int) -> np.ndarray:
    """A series ``(N, L, F)`` (user units) after each caption, ``eval.sample.chunk`` at a time."""
    s = c.eval.sample
    sampler = s.make(model.diffusion[MODALITY])
    out = []
    for i in tqdm(range(0, len(captions), s.chunk), disable=not c.eval.progress, desc="text → series", leave=False):
        out.append(gen.generate_span(model, captions[i : i + s.chunk], MODALITY, shape, sampler,
                                     s.guidance_args, seed=seed + i).numpy())
    return np.concatenate(out) if out else np.zeros((0, *shape), np.float32)


def series_to_text(model: FusionModel, c: TTSConfig, values: np.ndarray) -> list[str]:
    """A caption of each series ``(N, L, F)`` (greedy unless ``eval.sample.temperature``)."""
    s = c.eval.sample
    out: list[str] = []
    for i in tqdm(range(0, len(values), s.chunk), disable=not c.eval.progress, desc="series → text", leave=False):
        out += gen.caption(model, MODALITY, values[i : i + s.chunk], max_new_tokens=s.max_new_tokens,
                           temperature=s.temperature, top_k=s.top_k or None, seed=s.seed + i)
    return out


def forecasts(model: FusionModel, c: TTSConfig, pairs: Pairs) -> tuple[np.ndarray, np.ndarray]:
    """Each series' first ``eval.history`` steps forecast to full length, with its caption and
    without: two ``(N, L, F)`` arrays."""
    s = c.eval.sample
    sampler = s.make_conditional(model.diffusion[MODALITY])
    history = pairs.values[:, : c.eval.history]
    kw = dict(resample=s.resample, seed=s.seed, chunk=s.chunk, progress=c.eval.progress)
    with_caption = gen.forecast(model, MODALITY, history, pairs.values.shape[1], sampler,
                                prompts=pairs.captions, **kw)
    alone = gen.forecast(model, MODALITY, history, pairs.values.shape[1], sampler, **kw)
    return with_caption, alone


def evaluate(run_dir: Path, argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="fusion evaluate RUN_DIR", description="text → series, series → text and "
                                "text-conditioned forecasting (config values as key=value, e.g. eval.n=100)")
    p.add_argument("--out", default="", help="subfolder of the run for this evaluation's eval.json, report.md "
                   "and pictures (an ablation); default the run folder")
    a, overrides = parse_command(p, argv)
    run_dir = Path(run_dir)
    setup_logging(run_dir / "train.log")
    c, model = load_run(run_dir, overrides)
    out_dir = run_dir / a.out if a.out else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = evaluate_pairs(model, c, test_pairs(c, run_dir), out_dir)
    res["eval_seconds"] = time.time() - t0
    (out_dir / "eval.json").write_text(json.dumps(res, indent=1))
    write_report(out_dir, run_dir, c, res)
    for direction in ("text_to_series", "series_to_text"):
        for group, acc in res.get(direction, {}).items():
            log.info("%-15s %-9s %s", direction, group, " ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    if "unseen_family" in res:
        u = res["unseen_family"]
        log.info("series_to_text  %-9s %s", u["family"], " ".join(f"{k} {v:.3f}" for k, v in u["series_to_text"].items()))
    if "disc" in res:
        log.info("discriminative score (generated vs real, shared captions) %.4f", res["disc"])
    return res


def evaluate_pairs(model: FusionModel, c: TTSConfig, test: Pairs, out_dir: Path) -> dict:
    """Every measurement of the module docstring on ``test``; pictures into ``out_dir``."""
    e = c.eval
    fam = c.data.family
    shape = test.values.shape[1:]
    # the group the discriminative score and fidelity measure: seen combinations (synthetic), else
    # the held-out pairs ("test": for real data the later part of every series, never trained on)
    primary = "seen" if c.data.source == "synthetic" else "test"
    groups = sorted(set(test.groups), key=lambda g: (g != primary, g))
    res: dict = {"machine": machine_description(), "guidance": e.sample.guidance,
                 "guidance_interval": list(e.sample.guidance_interval), "guidance_rescale": e.sample.guidance_rescale,
                 "test_pairs": len(test),
                 "groups": {g: test.groups.count(g) for g in groups}}
    fake = text_to_series(model, c, test.captions, shape, e.seed)
    caps = series_to_text(model, c, test.values)
    first = test.group(groups[0])
    idx = [i for i, g in enumerate(test.groups) if g == groups[0]]
    if len(idx) >= DISC_MIN_PAIRS:
        res["disc"] = discriminative_score(first.values, fake[idx], iters=e.disc_iters, seed=e.seed)
    else:
        log.warning("%d test pairs: too few for a discriminative score (needs %d)", len(idx), DISC_MIN_PAIRS)
    res["caption_examples"] = [(test.captions[i], caps[i]) for i in idx[:6]]
    if first.properties and e.fidelity:
        res["fidelity"] = fidelity(first, fake[idx], c, out_dir)
    if c.data.source == "synthetic" and e.unseen_family:
        res["unseen_family"] = unseen_family(model, c, len(first), shape)
    if test.properties:
        res["text_to_series"], res["series_to_text"] = {}, {}
        for g in groups:
            rows = [i for i, gi in enumerate(test.groups) if gi == g]
            truth = [test.properties[i] for i in rows]
            res["text_to_series"][g] = P.accuracy(truth, E.estimate(fake[rows], fam))
            res["series_to_text"][g] = P.accuracy(truth, [parse(caps[i]) for i in rows])
        n = min(e.forecasts, len(first))
        if n and e.history < shape[0]:  # eval.forecasts=0: none
            part = first.subset(range(n))
            with_caption, alone = forecasts(model, c, part)
            res["forecast"] = {"history": e.history, "n": n,
                               "with_caption": P.accuracy(part.properties, E.estimate(with_caption, fam)),
                               "alone": P.accuracy(part.properties, E.estimate(alone, fam))}
            late = [i for i, p in enumerate(part.properties) if p.event_where == "end"]
            if late:  # events after the history: only the caption knows them
                res["forecast"]["late_events"] = {
                    "n": len(late),
                    "with_caption": P.accuracy([part.properties[i] for i in late],
                                               E.estimate(with_caption[late], fam))["event"],
                    "alone": P.accuracy([part.properties[i] for i in late], E.estimate(alone[late], fam))["event"]}
            forecast_plot(part, with_caption, alone, e.history, out_dir / "forecasts.png")
    grid = first.subset(range(min(e.grid, len(first))))
    triple = [cap for cap in grid.captions for _ in range(3)]
    drawn = text_to_series(model, c, triple, shape, e.seed + 1).reshape(len(grid), 3, *shape)
    series_grid(grid, drawn, out_dir / "text_to_series.png")
    return res


def unseen_family(model: FusionModel, c: TTSConfig, n: int, shape) -> dict:
    """Series → text on ``n`` series of ``eval.unseen_family`` (a family of shapes training never
    drew), from the seen combinations: per-property accuracy of the parsed captions against the
    drawn truth (no estimator involved)."""
    d, e = c.data, c.eval
    held = set(P.held_out_combinations(d.held_out_combinations, d.combination_seed))
    seen = [p for p in P.ALL_COMBINATIONS if p not in held]
    drawn = P.draw(n, seen, shape[0], shape[1], seed=e.seed + 4242, family=e.unseen_family)
    caps = series_to_text(model, c, drawn.values)
    acc = P.accuracy(drawn.properties, [parse(t) for t in caps])
    return {"family": e.unseen_family, "n": n, "series_to_text": acc,
            "examples": [(C.describe(p, random.Random(i)), t) for i, (p, t) in enumerate(zip(drawn.properties[:4], caps))]}


def fidelity(real: Pairs, fake: np.ndarray, c: TTSConfig, out_dir: Path) -> dict:
    """:func:`.fidelity.compare` of ``fake`` against the ``real`` pairs (one generated series per
    caption), the discriminative score per caption group (groups of at least ``4 *
    DISC_MIN_PAIRS`` series) and, for synthetic data, the same against a second real series
    drawn for each caption (the floor: what two real samples score); the overlay plot."""
    e, fam = c.eval, c.data.family
    out = FI.compare(real.values, fake, real.properties, fam)
    floor = None
    if c.data.source == "synthetic":
        again = P.generate(real.properties, real.values.shape[1], real.values.shape[2], seed=e.seed + 99,
                           family=fam).values
        floor = FI.compare(real.values, again, real.properties, fam)
        out["floor"] = floor["groups"]
    for g, idx in {"all": list(range(len(real))), **FI.caption_groups(real.properties)}.items():
        if len(idx) < 4 * DISC_MIN_PAIRS:
            continue
        row = out["groups"][g]
        row["disc"] = discriminative_score(real.values[idx], fake[idx], iters=e.disc_iters, seed=e.seed)
        if floor is not None:
            row["disc_floor"] = discriminative_score(real.values[idx], again[idx], iters=e.disc_iters, seed=e.seed)
    fidelity_plot(out, real.properties, out_dir / "fidelity.png")
    out.pop("per_series")
    return out
