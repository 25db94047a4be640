"""Discriminative scores per caption group at a size where they can be judged (#28).

The recipe's report scores each caption group on the ~130 series a default evaluation gives it,
where even two real samples score up to 0.15 apart. Here: ``--n`` seen captions (default
1500), one generated series per caption (the run's own sampler and guidance) and a second real
series per caption (the floor), and per caption group

- the papers' discriminative score (``|accuracy - 0.5|`` of the post-hoc GRU classifier,
  recipes/timeseries/metrics.py), mean ± 95% interval over ``--repeats`` classifier runs, for
  generated vs real and for real vs real;
- a second, model-free two-sample test: leave-one-out **1-nearest-neighbour** classification of
  the pooled series (``|accuracy - 0.5|`` on each sample, averaged: ~0 when the two samples come
  from one distribution, 0.5 when they never mix). It shares
  nothing with the GRU (``metrics.one_nn_score``), so a score that only the GRU finds small is
  not taken as a result.

``--decompose`` adds, per group, what the 1-NN test separates: each series split by the least-squares
fit to its caption's model (the report's fidelity fit) into its structure (the fit) and its
residual, and the two scored apart, each against its own real-vs-real floor; and a hybrid, the
generated structure with the residual of the second real series of the same caption, against the
real series (its floor is the plain floor): at the floor when the residual's texture is all that
separates the generated series; beside them the residual's medians (lag-1 autocorrelation and
noise level, real / generated), where in frequency the residuals differ (the generated
residual's power over the real one's in four bands of frequency, lowest first), and how the fitted
structure's coefficients are spread (Kolmogorov-Smirnov distance of the trend's start and rise,
the cycle's amplitude, the event's size and its position, generated vs real beside a second
real series vs real; and the rise's percentiles by captioned trend). ``--save`` / ``--load``
keep the generated series (``.npz``) so a second reading needs no sampling.

    python bench/tts_group_disc.py RUN [--n 1500] [--repeats 3] [--floor-draws 5] [--decompose]
        [--save fake.npz | --load fake.npz] [--set eval.sample.guidance=3 ...]

Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import mean_ci, print_json, print_table
from fusion_core.recipes.text_timeseries import fidelity as FI
from fusion_core.recipes.text_timeseries import properties as P
from fusion_core.recipes.text_timeseries import separation as SEP
from fusion_core.recipes.text_timeseries.evaluate import text_to_series
from fusion_core.recipes.text_timeseries.sample import load_run
from fusion_core.recipes.text_timeseries.train import test_pairs
from fusion_core.recipes.timeseries.metrics import discriminative_score, one_nn_score
from scipy.stats import ks_2samp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=1500, help="seen captions (one generated and two real series each)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="GRU classifier runs per group and side (0: the 1-NN test alone)")
    ap.add_argument("--floor-draws", type=int, default=1,
                    help="independent second real series per caption for the 1-NN floor (mean ± 95%% interval "
                         "when > 1: how far two real samples of a group's size score apart)")
    ap.add_argument("--disc-iters", type=int, default=None, help="classifier steps (default: the run's eval.disc_iters)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. eval.sample.guidance=3")
    ap.add_argument("--decompose", action="store_true",
                    help="also score the fit's structure and its residual apart, and the hybrid (see above)")
    ap.add_argument("--save", type=Path, help="write the generated series here (.npz)")
    ap.add_argument("--load", type=Path, help="read the generated series from --save instead of sampling")
    a = ap.parse_args()
    if a.floor_draws < 1 or a.repeats < 0:  # before the model is loaded and sampled
        ap.error(f"--floor-draws must be >= 1 and --repeats >= 0, got {a.floor_draws} and {a.repeats}")
    c, model = load_run(Path(a.run), [f"eval.n={a.n}", "eval.progress=false", *a.set])
    iters = a.disc_iters or c.eval.disc_iters
    test = test_pairs(c, Path(a.run))
    seen = test.subset([i for i, g in enumerate(test.groups) if g == "seen"])
    shape = seen.values.shape[1:]
    t0 = time.time()
    if a.load is not None:
        fake, sample_s = load_fake(a.load, seen.captions, shape)
    else:
        fake = text_to_series(model, c, seen.captions, shape, c.eval.seed + 1)
        sample_s = time.time() - t0
    if a.save is not None:
        np.savez(a.save, fake=fake, captions=np.array(seen.captions), sample_seconds=sample_s)
    agains = [P.generate(seen.properties, shape[0], shape[1], seed=12345 + k, family=c.data.family).values
              for k in range(a.floor_draws)]  # the GRU floor uses the first draw
    print(f"{len(seen)} seen captions, generated in {sample_s:.0f} s; guidance {c.eval.sample.guidance} on "
          f"{list(c.eval.sample.guidance_interval)} rescale {c.eval.sample.guidance_rescale}", flush=True)
    if a.decompose:  # every series fitted once; the groups index the fits
        fits = [FI.measure(x, seen.properties, c.data.family) for x in (seen.values, fake, agains[0])]
    rows = []
    for g, idx in {"all": list(range(len(seen))), **FI.caption_groups(seen.properties)}.items():
        real = seen.values[idx]
        t0 = time.time()
        gen = [discriminative_score(real, fake[idx], iters=iters, seed=r) for r in range(a.repeats)]
        floor = [discriminative_score(real, agains[0][idx], iters=iters, seed=r) for r in range(a.repeats)]
        gru = {"disc (GRU)": mean_ci(gen), "floor (GRU)": mean_ci(floor)} if a.repeats else {}
        rows.append({"group": g, "n": len(idx), **gru,
                     "1-NN": round(one_nn_score(real, fake[idx]), 4),
                     "floor (1-NN)": mean_ci([one_nn_score(real, x[idx]) for x in agains]),
                     "disc_runs": gen, "floor_runs": floor, "seconds": round(time.time() - t0, 1)})
        if a.decompose:
            fr, ff, fg = ({k: per_series(f, k)[idx] for k in (*COEFFICIENTS, "resid", "resid_acf1", "noise")}
                          for f in fits)
            parts = SEP.one_nn_parts(real, fake[idx], agains[0][idx], (fr["resid"], ff["resid"], fg["resid"]))
            rows[-1].update({f"1-NN {k}": round(v, 4) for k, v in parts.items() if k not in ("whole", "floor")})
            rows[-1].update({f"KS {k} gen / floor": ks_pair(fr[k], ff[k], fg[k]) for k in COEFFICIENTS})
            rows[-1].update({"acf1 real / gen": f"{np.median(fr['resid_acf1']):.3f} / {np.median(ff['resid_acf1']):.3f}",
                             "noise real / gen": f"{np.median(fr['noise']):.4f} / {np.median(ff['noise']):.4f}",
                             "residual power gen / real, 4 bands low->high":
                                 " ".join(f"{v:.2f}" for v in SEP.band_power_ratio(fr["resid"], ff["resid"]))})
        print({k: v for k, v in rows[-1].items() if not k.endswith("_runs")}, flush=True)
    print_table([{k: v for k, v in r.items() if not k.endswith("_runs")} for r in rows],
                f"discriminative scores per caption group, run {a.run} ({len(seen)} seen captions, "
                f"{a.repeats} GRU runs of {iters} steps per cell)" if a.repeats else
                f"discriminative scores per caption group, run {a.run} ({len(seen)} seen captions, 1-NN test only)")
    if a.decompose:
        trends = trend_spread([f.rise for f in fits], seen.properties)
        print_table(trends, "the fitted trend's rise (last step less first) by captioned trend, 10th / 50th / 90th "
                            "percentile: real, generated, second real series")
    print_json("tts_group_disc", rows, run=str(a.run), n=len(seen), sample_seconds=sample_s,
               **({"trends": trends} if a.decompose else {}))


COEFFICIENTS = ("start", "rise", "amplitude", "event_size", "event_at")  # the fit's structure, series by series


def per_series(fit: FI.Fidelity, key: str) -> np.ndarray:
    """One of ``measure``'s per-series arrays; the event position as a float with ``nan`` where
    the caption has no event (``measure`` writes -1 there)."""
    v = getattr(fit, key)
    return np.where(v < 0, np.nan, v.astype(float)) if key == "event_at" else v


def ks_pair(real: np.ndarray, fake: np.ndarray, again: np.ndarray) -> str:
    """Two-sample Kolmogorov-Smirnov distance of one fitted coefficient, generated vs real and
    (the floor) a second real series vs real; ``-`` where the group has under 20 values."""
    a, b, g = (v[~np.isnan(v)] for v in (real, fake, again))
    if min(len(a), len(b), len(g)) < 20:
        return "-"
    return f"{ks_2samp(a, b).statistic:.3f} / {ks_2samp(a, g).statistic:.3f}"


def trend_spread(rises: list[np.ndarray], props: list) -> list[dict]:
    """Percentiles of the fitted trend's rise (real, generated, second real: ``measure``'s
    ``rise``) per captioned trend (rising, falling, flat)."""
    rows = []
    for trend in sorted({p.trend for p in props}):
        m = np.array([p.trend == trend for p in props])
        q = [np.quantile(r[m], [0.1, 0.5, 0.9]) for r in rises]
        rows.append({"trend": trend, "n": int(m.sum()),
                     **{name: " ".join(f"{v:+.3f}" for v in qq) for name, qq in zip(("real", "generated", "second real"), q)}})
    return rows


def load_fake(path: Path, captions: list[str], shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
    """Generated series saved by ``--save``, checked to belong to these captions."""
    z = np.load(path)
    fake, saved = z["fake"], [str(x) for x in z["captions"]]
    if saved != list(captions) or fake.shape[1:] != tuple(shape):
        raise SystemExit(f"{path}: saved for {len(saved)} other captions or shape {fake.shape[1:]}, "
                         f"not these {len(captions)} captions of shape {tuple(shape)} (same run, --n and --set?)")
    return fake, float(z["sample_seconds"])


if __name__ == "__main__":
    main()
