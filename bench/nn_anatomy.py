"""What the 1-NN two-sample test sees in a timeseries run (#27): its two sides apart, and two
plain statistics beside them.

For a run scored against its training windows (the benchmark presets), with the run's own samples
(``eval_samples.npy``, or ``--samples FILE``): the share of real windows whose nearest neighbour is
real and of generated windows whose nearest is generated (0.5 each for one distribution), with
real windows that share steps left out, and with real windows up to ``k`` window lengths apart
left out (a trending record's neighbouring windows resemble each other beyond their overlap: if
the score came from that, it would fall as ``k`` grows); then the mean pairwise distance within
and across the samples (spread) and the mean step-to-step change per feature (roughness).

    python bench/nn_anatomy.py RUN [--samples FILE] [--radii 1 2 5 20]

Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common import print_json, print_table
from fusion_core.recipes.timeseries.evaluate import held_out, held_out_starts, unit_scale
from fusion_core.recipes.timeseries.sample import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--samples", type=Path, help="generated windows (user units); default RUN/eval_samples.npy")
    ap.add_argument("--radii", type=int, nargs="+", default=[1, 2, 5, 20],
                    help="real windows this many window lengths apart are not neighbours")
    a = ap.parse_args()
    c, _, splits = load_run(a.run, ["eval.progress=false"])
    e = c.eval
    real, value_range = held_out(c, splits, e.n, e.seed)
    at = held_out_starts(c, splits, e.n, e.seed)
    fake = np.load(a.samples or a.run / "eval_samples.npy")
    r, f = unit_scale((real, fake), value_range)
    n, L = len(r), r.shape[1]
    x = torch.as_tensor(np.concatenate([r, f]).reshape(n + len(f), -1), dtype=torch.float64)
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    label = torch.cat([torch.zeros(n), torch.ones(len(f))])
    gap = None if at is None else (torch.as_tensor(at)[:, None] - torch.as_tensor(at)[None, :]).abs()
    rows = []
    for k in a.radii if gap is not None else [0]:
        dk = d.clone()
        if gap is not None:
            block = dk[:n, :n]
            block[gap < k * L] = float("inf")
            dk[:n, :n] = block
        right = (label[dk.argmin(1)] == label).double()
        rows.append({"real windows left out": f"< {k} x {L} steps apart" if gap is not None else "none (independent)",
                     "real: nearest real": round(float(right[:n].mean()), 3),
                     "generated: nearest generated": round(float(right[n:].mean()), 3)})
    print_table(rows, f"1-NN sides, run {a.run} ({n} real vs {len(f)} generated windows of {L} x {r.shape[2]})")
    m = min(1000, n, len(f)) // 2

    def spread(p, q):
        return float(torch.cdist(torch.as_tensor(p.reshape(len(p), -1)), torch.as_tensor(q.reshape(len(q), -1))).mean())

    stats = {"mean pairwise distance real-real": spread(r[:m], r[m: 2 * m]),
             "generated-generated": spread(f[:m], f[m: 2 * m]), "real-generated": spread(r[:m], f[:m])}
    rough = {"real": np.abs(np.diff(r, axis=1)).mean((0, 1)).round(4).tolist(),
             "generated": np.abs(np.diff(f, axis=1)).mean((0, 1)).round(4).tolist()}
    print({k: round(v, 3) for k, v in stats.items()})
    print("mean step-to-step change per feature (scaled units):", rough)
    print_json("nn_anatomy", rows, run=str(a.run), spread=stats, roughness=rough)


if __name__ == "__main__":
    main()
