"""The Quickstart's scoring, before and after (#30), on the same machine in one run: TimeGAN's GRU
discriminative and predictive scores at the quick preset's sizes (3000 windows of 24 x 5, 2000 /
3000 iterations, batch 128, 3 repeats), each repeat trained on its own (before) and the three
trained as one block-diagonal model (after; the same scores, see tests/test_timeseries.py), with
1 and 2 threads.

    python bench/scoring.py [--n 3000] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402

from fusion_core.recipes.timeseries import block_metrics, metrics  # noqa: E402
from fusion_core.recipes.timeseries.data import sine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--disc-iters", type=int, default=2000)
    ap.add_argument("--pred-iters", type=int, default=3000)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    real, fake = sine(a.n, 24, 5, seed=1), sine(a.n, 24, 5, seed=2)
    seeds = [0, 1, 2]
    rows = []
    for threads in a.threads:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        d1 = [metrics.discriminative_score(real, fake, "gru", a.disc_iters, 128, s) for s in seeds]
        p1 = [metrics.predictive_score(real, fake, "gru", a.pred_iters, 128, s) for s in seeds]
        before = time.perf_counter() - t0
        t0 = time.perf_counter()
        d2 = block_metrics.discriminative_scores_gru(real, fake, seeds, a.disc_iters, 128)
        p2 = block_metrics.predictive_scores_gru(real, fake, seeds, a.pred_iters, 128)
        after = time.perf_counter() - t0
        rows.append({"threads": threads, "per repeat (s)": round(before, 1), "batched (s)": round(after, 1),
                     "ratio": round(after / before, 3), "max |score diff|": max(abs(x - y) for x, y in zip(d1 + p1, d2 + p2))})
    print_table(rows, f"GRU disc ({a.disc_iters} it) + pred ({a.pred_iters} it), 3 repeats, {a.n} windows 24 x 5")
    print(json.dumps({"bench": "scoring", "rows": rows}))


if __name__ == "__main__":
    main()
