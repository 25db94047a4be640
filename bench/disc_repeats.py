"""The discriminative score of a timeseries run, one classifier run at a time, beside a second
method (#27).

A GRU classifier with ``features // 2`` hidden units over a long window either learns to tell the
samples apart in a given run or does not, so at lengths 100-384 its repeats can scatter between
~0 and 0.5 and a mean over three says little. This script scores the run's own generated windows
(``eval_samples.npy``, or ``--samples FILE``) against the real windows ``fusion evaluate`` uses,
and the real-vs-real floor (the same pair ``fusion evaluate`` scores), with

- the GRU discriminative score (the recipe's, TimeGAN's protocol), each of ``--repeats`` runs shown;
- the feature discriminative score (``window_stats.feature_discriminative_score``: logistic regression
  on window summary statistics, out of fold), ``--repeats`` fold shuffles — it trains no network
  on the raw series, so it cannot fail to learn the way the GRU can.

    python bench/disc_repeats.py RUN [--repeats 10] [--samples FILE] [--skip-gru] [--top 8]

Prints a table, the window statistics that tell the samples apart best one at a time (their ROC
AUC, 0.5 = no difference, with the medians of each sample), and a JSON line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from common import mean_ci, print_json, print_table
from fusion_core.recipes.timeseries import block_metrics, window_stats
from fusion_core.recipes.timeseries.evaluate import floor_pair, held_out, unit_scale
from fusion_core.recipes.timeseries.sample import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--samples", type=Path, help="generated windows (user units); default RUN/eval_samples.npy")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--skip-gru", action="store_true", help="only the feature score (seconds, not minutes)")
    ap.add_argument("--top", type=int, default=8, help="statistics to list, most telling first")
    a = ap.parse_args()
    c, _, splits = load_run(a.run, ["eval.progress=false"])
    e = c.eval
    real, value_range = held_out(c, splits, e.n, e.seed)
    fake = np.load(a.samples or a.run / "eval_samples.npy")
    fa, fb, kind = floor_pair(c, splits, real, e)
    r, f, ra, rb = unit_scale((real, fake, fa, fb), value_range)
    pairs = {"generated vs real": (r, f), f"floor ({kind})": (ra, rb)}
    seeds = [e.seed + k for k in range(a.repeats)]
    torch.set_num_threads(1)  # tiny GRUs: one thread is faster (bench/scoring.py)
    rows, out = [], {}
    for name, (r, f) in pairs.items():
        t0 = time.time()
        feat = [window_stats.feature_discriminative_score(r, f, seed=s) for s in seeds]
        row = {"pair": name, "feature score": mean_ci(feat),
               "feature runs": " ".join(f"{v:.3f}" for v in feat)}
        out[name] = {"feature": feat}
        if not a.skip_gru:
            gru = block_metrics.discriminative_scores_gru(r, f, seeds, e.disc_iters, e.batch, "cpu")
            row["GRU score"] = mean_ci(gru)
            row["GRU runs"] = " ".join(f"{v:.3f}" for v in gru)
            out[name]["gru"] = gru
        row["seconds"] = round(time.time() - t0)
        rows.append(row)
    print_table(rows, f"discriminative scores, run {a.run}: {len(real)} real vs {len(fake)} generated windows "
                f"of {real.shape[1]} x {real.shape[2]}, {a.repeats} runs each (mean ± 95% interval)")
    top = window_stats.statistic_aucs(*pairs["generated vs real"], splits.feature_names, a.top)
    print_table(top, "window statistics that tell generated from real apart, one at a time (AUC 0.5: no difference)")
    print_json("disc_repeats", rows, run=str(a.run), runs=out, statistics=top)


if __name__ == "__main__":
    main()
