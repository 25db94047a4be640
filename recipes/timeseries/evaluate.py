"""``fusion evaluate RUN_DIR``: generated windows against held-out real ones — discriminative and
predictive scores (TimeGAN's GRU) and their long-sequence transformer variants (LDS, LPS),
Context-FID, correlations, marginals, the closed-form sine fit for sine data — plus PCA/t-SNE
plots, series overlays and ``report.md``.

    fusion evaluate RUN                                   # eval.* and sample.* from the run
    fusion evaluate RUN eval.metrics=[disc,lds] eval.repeats=1 sample.sampler=ddpm sample.steps=250
    fusion evaluate RUN eval.long_factor=4 --tag long     # files eval-long.json, report-long.md, ...
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fusion_core import generation as gen
from fusion_core.engine.recipe import machine_description, parse_command, setup_logging
from fusion_core.engine.stats import mean_ci95

from . import block_metrics, metrics, plots
from . import sine_fit as SF
from .config import ALL_METRICS, TSConfig, TSEvalArgs
from .data import sine
from .report import NAMES, sine_fit_text, write_report
from .sample import load_run
from .splits import Splits
from .train import MODALITY, window_shape

log = logging.getLogger("fusion_core")


def score(real: np.ndarray, fake: np.ndarray, e: TSEvalArgs, seed: int = 0,
          value_range: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, tuple[float, float]]:
    """Every requested metric as (mean, 95% half-width) over ``e.repeats`` runs. Both inputs are
    in user units and are min-max scaled with ``value_range`` (per-feature lo, hi; TimeGAN's
    convention: the dataset's range, identity for the [0, 1] sine data) before scoring."""
    r, f = unit_scale((real, fake), value_range if value_range is not None
                      else (real.min(axis=(0, 1)), real.max(axis=(0, 1))))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    fns = {
        "disc": lambda s: metrics.discriminative_score(r, f, "gru", e.disc_iters, e.batch, s, dev),
        "pred": lambda s: metrics.predictive_score(r, f, "gru", e.pred_iters, e.batch, s, dev),
        "lds": lambda s: metrics.discriminative_score(r, f, "transformer", e.disc_iters, e.batch, s, dev),
        "lps": lambda s: metrics.predictive_score(r, f, "transformer", e.pred_iters, e.batch, s, dev),
        "fid": lambda s: metrics.context_fid(r, f, e.fid_iters, e.batch, seed=s, device=dev),
    }
    seeds = [seed + k for k in range(e.repeats)]
    batched = {  # the GRU metrics' repeats trained as one block model: the same nets, one run's launches
        "disc": lambda: block_metrics.discriminative_scores_gru(r, f, seeds, e.disc_iters, e.batch, dev),
        "pred": lambda: block_metrics.predictive_scores_gru(r, f, seeds, e.pred_iters, e.batch, dev),
    }
    out, runs = {}, {}
    jobs = [(name, None) for name in e.metrics if name in batched]
    jobs += [(name, k) for name in e.metrics if name in fns and name not in batched for k in range(e.repeats)]
    threads = torch.get_num_threads()
    for name, k in tqdm(jobs, desc="scoring", disable=not e.progress, leave=False):
        if k is None:  # tiny GRUs: one thread is faster than two on a CPU (bench/scoring.py)
            torch.set_num_threads(1 if dev == "cpu" else threads)
            try:
                runs[name] = batched[name]()
            finally:
                torch.set_num_threads(threads)
        else:
            runs.setdefault(name, []).append(fns[name](seed + k))
    for name in e.metrics:
        if name == "corr":
            out[name] = (metrics.correlational_score(r, f), 0.0)
        elif name == "jsd":
            out[name] = (metrics.marginal_jsd(r, f), 0.0)
        else:
            out[name] = mean_ci95(runs[name])
    return out


def unit_scale(arrays, value_range) -> list[np.ndarray]:
    """Each array in user units mapped to [0, 1] by ``value_range`` (per-feature lo, hi), the
    metrics' input: TimeGAN's convention; a constant feature is only shifted."""
    lo, hi = value_range
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return [(x - lo) / span for x in arrays]


def held_out(c: TSConfig, splits: Splits, n: int, seed: int = 0, long_factor: int = 1):
    """Real windows to score against, never trained on, and the value range metrics use.

    Sine data is a generator: a fresh draw of ``n`` windows (a new seed), in its own [0, 1]
    range; with ``long_factor`` > 1, windows cut from series that many windows long (TimeGAN's
    sine is not stationary: a window cut from the middle of a sine is not a window from the
    start). Loaded data: the test split (validation if the test split is empty), or with
    ``eval.against=train`` the training windows (the papers' protocol), scaled by the training
    data's range (its windows already start anywhere in the series).
    """
    if c.data.source == "sine":
        L, F, k = c.data.length, c.data.sine_features, long_factor
        real = sine(-(-n // k), k * L, F, seed=c.train.seed + 1_000_003 + seed,
                    phase=c.data.sine_phase).reshape(-1, L, F)[:n]
        return real, (np.zeros(F), np.ones(F))
    real = getattr(splits, _reference_split(c, splits))
    if len(real) < 8:
        raise ValueError("fewer than 8 held-out windows to compare against: enlarge the test split "
                         "(or score against the training windows, eval.against=train, as the papers do)")
    real = real[_pick(len(real), n, seed)]
    return real, (np.nanmin(splits.fit_data, 0), np.nanmax(splits.fit_data, 0))


def _reference_split(c: TSConfig, splits: Splits) -> str:
    if c.eval.against == "train":  # the published protocol: score against the training windows
        return "train"
    return "test" if len(splits.test) >= 8 else "validation"


def _pick(total: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(total)[:n]


def held_out_starts(c: TSConfig, splits: Splits, n: int, seed: int = 0) -> np.ndarray | None:
    """Where the windows :func:`held_out` returns start on the record's time axis
    (:meth:`Splits.window_starts`: bench/nn_anatomy.py leaves overlapping windows out of the
    1-NN test with them); ``None`` for the sine data (independent draws)."""
    if c.data.source == "sine":
        return None
    starts = splits.window_starts(_reference_split(c, splits), c.data.stride)
    return None if starts is None else starts[_pick(len(starts), n, seed)]


def real_floor(c: TSConfig, splits: Splits, real: np.ndarray, e: TSEvalArgs, value_range) -> tuple[dict, str]:
    """Real windows scored against real windows, the same way as the generated ones: what the
    metrics give two samples of the real distribution (the floor); the pair is
    :func:`floor_pair`'s."""
    a, b, kind = floor_pair(c, splits, real, e)
    return _as_dict(score(a, b, e, e.seed, value_range)), kind


def floor_pair(c: TSConfig, splits: Splits, real: np.ndarray, e: TSEvalArgs) -> tuple[np.ndarray, np.ndarray, str]:
    """The two real samples :func:`real_floor` scores against each other, and what they are.
    Sine: ``real`` against a fresh draw. Loaded data scored against the test split: the test
    windows against training windows (the distribution-shift floor of a chronological split).
    Scored against the training windows (``eval.against=train``): two disjoint halves of them —
    drawing both sides from one pool would share most windows and flatter the floor."""
    rng = np.random.default_rng(e.seed + 7)
    if c.data.source == "sine":
        ref = held_out(c, splits, e.n, e.seed + 1)[0]
        return real, ref, f"a second draw of {len(ref)} sine windows"
    order = rng.permutation(len(splits.train))  # indices: only the windows scored are copied
    if c.eval.against == "train":
        k = min(e.n, len(order) // 2)
        return (splits.train[order[:k]], splits.train[order[k: 2 * k]],
                f"two disjoint halves of the training windows, {k} vs {k}")
    ref = splits.train[order[: e.n]]
    return real, ref, f"{len(ref)} training windows against the test windows"


def _as_dict(scores: dict) -> dict:
    return {k: {"mean": m, "ci95": ci} for k, (m, ci) in scores.items()}


def evaluate(run_dir: Path, argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="fusion evaluate RUN_DIR", description="score generated vs held-out "
                                "series (config values as key=value, e.g. eval.metrics=[disc,lds] eval.repeats=1)")
    p.add_argument("--tag", default="", help="name this evaluation's files eval-TAG.json, report-TAG.md, "
                   "eval_samples-TAG.npy, overlay-TAG.png, ... (side-by-side evaluations keep theirs)")
    p.add_argument("--full", action="store_true", help="every metric (" + ", ".join(ALL_METRICS) + "), whatever "
                   "eval.metrics says: the long-sequence transformer scores and Context-FID take minutes each on a CPU")
    a, overrides = parse_command(p, argv)
    if a.full:
        overrides = [*overrides, f"eval.metrics=[{','.join(ALL_METRICS)}]"]
    run_dir = Path(run_dir)
    setup_logging(run_dir / "train.log")
    c, model, splits = load_run(run_dir, overrides)
    e, s = c.eval, c.sample
    real, value_range = held_out(c, splits, e.n, e.seed)
    shape = window_shape(c, splits)
    sampler = s.make(model.diffusion[MODALITY])
    t0 = time.time()
    fake = gen.sample(model, MODALITY, e.n, shape, sampler, seed=e.seed, chunk=s.chunk, progress=e.progress,
                      cuda_graphs=s.cuda_graphs).numpy()
    sample_s = time.time() - t0
    suffix = f"-{a.tag}" if a.tag else ""  # a tagged evaluation keeps its own files: runs side by side
    np.save(run_dir / f"eval_samples{suffix}.npy", fake)
    t0 = time.time()
    scores = score(real, fake, e, e.seed, value_range)
    score_s = time.time() - t0
    long_result = None
    if e.long_factor > 1:  # windows cut from series longer than the training window
        n_series, L = -(-e.n // e.long_factor), shape[0]
        t0 = time.time()
        cond = s.make_conditional(model.diffusion[MODALITY])
        long = gen.sample_long(model, MODALITY, n_series, e.long_factor * L, shape, sampler, cond,
                               resample=s.resample, seed=e.seed + 1, chunk=s.chunk, progress=e.progress)
        long_s = time.time() - t0
        cut = long.reshape(n_series * e.long_factor, L, shape[1]).numpy()[: e.n]
        # loaded data: the same held-out windows (they start anywhere in the series already)
        real_cut = held_out(c, splits, e.n, e.seed + 2, e.long_factor)[0] if c.data.source == "sine" else real
        long_result = {"factor": e.long_factor, "sample_seconds": long_s, "resample": s.resample,
                       "cond_sampler": f"{s.cond_sampler} {len(cond)} steps",
                       "scores": _as_dict(score(real_cut, cut, e, e.seed, value_range))}
    reference, reference_kind = None, None
    if e.reference:
        reference, reference_kind = real_floor(c, splits, real, e, value_range)
    sine_fit = None
    if c.data.source == "sine":  # a closed form: each curve's distance from the generator's family
        sine_fit = {"fake": SF.sine_fit(fake, c.data.sine_phase),
                    "real": SF.sine_fit(real, c.data.sine_phase)}
    pics = plots.embedding_plots(real, fake, run_dir, tsne=e.tsne, suffix=suffix)
    pics.append(plots.overlay(real, fake, splits.columns, run_dir / f"overlay{suffix}.png"))
    result = {"scores": _as_dict(scores), "n_real": len(real), "n_fake": len(fake),
              "sampler": sampler.__class__.__name__, "steps": len(sampler),
              "spacing": sampler.spacing, "sample_seconds": sample_s,
              "score_seconds": score_s, "machine": machine_description(), "long": long_result,
              "reference": reference, "reference_kind": reference_kind, "sine_fit": sine_fit}
    (run_dir / f"eval{suffix}.json").write_text(json.dumps(result, indent=1))
    write_report(run_dir, c, result, pics, f"report{suffix}.md")
    for k, (m, ci) in scores.items():
        log.info("%-28s %.4f ± %.4f", NAMES[k], m, ci)
    if sine_fit:
        log.info("%-28s %s", "sine fit (RMS distance)", sine_fit_text(sine_fit))
    for k, v in (reference or {}).items():
        log.info("%-28s %.4f ± %.4f (real training windows)", NAMES[k], v["mean"], v["ci95"])
    for k, v in (long_result or {}).get("scores", {}).items():
        log.info("%-28s %.4f ± %.4f (windows cut from %dx-long series)", NAMES[k], v["mean"], v["ci95"],
                 e.long_factor)
    return result
