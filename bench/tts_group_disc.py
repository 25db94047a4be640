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

    python bench/tts_group_disc.py RUN [--n 1500] [--repeats 3] [--floor-draws 5] [--set eval.sample.guidance=3 ...]

Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import mean_ci, print_json, print_table
from fusion_core.recipes.text_timeseries import fidelity as FI
from fusion_core.recipes.text_timeseries import properties as P
from fusion_core.recipes.text_timeseries.evaluate import text_to_series
from fusion_core.recipes.text_timeseries.sample import load_run
from fusion_core.recipes.text_timeseries.train import test_pairs
from fusion_core.recipes.timeseries.metrics import discriminative_score, one_nn_score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=1500, help="seen captions (one generated and two real series each)")
    ap.add_argument("--repeats", type=int, default=3, help="GRU classifier runs per group and side")
    ap.add_argument("--floor-draws", type=int, default=1,
                    help="independent second real series per caption for the 1-NN floor (mean ± 95%% interval "
                         "when > 1: how far two real samples of a group's size score apart)")
    ap.add_argument("--disc-iters", type=int, default=None, help="classifier steps (default: the run's eval.disc_iters)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. eval.sample.guidance=3")
    a = ap.parse_args()
    if a.floor_draws < 1:  # before the model is loaded and sampled
        ap.error(f"--floor-draws must be >= 1, got {a.floor_draws}")
    c, model = load_run(Path(a.run), [f"eval.n={a.n}", "eval.progress=false", *a.set])
    iters = a.disc_iters or c.eval.disc_iters
    test = test_pairs(c, Path(a.run))
    seen = test.subset([i for i, g in enumerate(test.groups) if g == "seen"])
    shape = seen.values.shape[1:]
    t0 = time.time()
    fake = text_to_series(model, c, seen.captions, shape, c.eval.seed + 1)
    sample_s = time.time() - t0
    agains = [P.generate(seen.properties, shape[0], shape[1], seed=12345 + k, family=c.data.family).values
              for k in range(a.floor_draws)]  # the GRU floor uses the first draw
    print(f"{len(seen)} seen captions, generated in {sample_s:.0f} s; guidance {c.eval.sample.guidance} on "
          f"{list(c.eval.sample.guidance_interval)} rescale {c.eval.sample.guidance_rescale}", flush=True)
    rows = []
    for g, idx in {"all": list(range(len(seen))), **FI.caption_groups(seen.properties)}.items():
        real = seen.values[idx]
        t0 = time.time()
        gen = [discriminative_score(real, fake[idx], iters=iters, seed=r) for r in range(a.repeats)]
        floor = [discriminative_score(real, agains[0][idx], iters=iters, seed=r) for r in range(a.repeats)]
        rows.append({"group": g, "n": len(idx),
                     "disc (GRU)": mean_ci(gen), "floor (GRU)": mean_ci(floor),
                     "1-NN": round(one_nn_score(real, fake[idx]), 4),
                     "floor (1-NN)": mean_ci([one_nn_score(real, x[idx]) for x in agains]),
                     "disc_runs": gen, "floor_runs": floor, "seconds": round(time.time() - t0, 1)})
        print({k: v for k, v in rows[-1].items() if not k.endswith("_runs")}, flush=True)
    print_table([{k: v for k, v in r.items() if not k.endswith("_runs")} for r in rows],
                f"discriminative scores per caption group, run {a.run} ({len(seen)} seen captions, "
                f"{a.repeats} GRU runs of {iters} steps per cell)")
    print_json("tts_group_disc", rows, run=str(a.run), n=len(seen), sample_seconds=sample_s)


if __name__ == "__main__":
    main()
