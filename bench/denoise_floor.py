"""How much of the noise a trained timeseries model removes at the smallest diffusion steps (#27).

A sampler's last step returns the model's clean-data estimate from ``x_t`` at ``t = 0``, where the
noise left is ``sigma_0`` (cosine schedule, T = 1000: 0.0064 in payload units, 0.3% of a min-max
range). Whatever the model cannot remove there stays in every generated value: a reading that is
constant in real windows comes out as a level with noise. This script noises the run's real
windows at steps ``t``, asks the model for ``x0``, and prints the RMS error of that estimate per
feature beside ``sigma_t`` (error = ``sigma_t``: nothing removed; for v-prediction the error is
``sigma_t`` times the error of the predicted v).

    python bench/denoise_floor.py RUN [--features NAME ...] [--n 256]

Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import print_json, print_table
from fusion_core.recipes.timeseries.evaluate import held_out
from fusion_core.recipes.timeseries.sample import load_run
from fusion_core.recipes.timeseries.train import MODALITY


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--features", nargs="*", default=[], help="columns to show one by one (default: none)")
    ap.add_argument("--n", type=int, default=256, help="real windows to noise")
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 1, 2, 5, 10, 20, 50, 100, 200])
    a = ap.parse_args()
    c, model, splits = load_run(a.run, ["eval.progress=false"])
    model.eval()
    adapter, diffusion = model.adapters[MODALITY], model.diffusion[MODALITY]
    real, _ = held_out(c, splits, a.n, c.eval.seed)
    x0 = adapter.encode(real).float().to(model.device)
    columns = splits.feature_names
    unknown = [f for f in a.features if f not in columns]
    if unknown:
        raise SystemExit(f"unknown features {unknown}; the run has {columns}")
    denoise = model.span_denoiser(MODALITY)
    g = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        for t in a.steps:
            eps = torch.randn(x0.shape, generator=g).to(x0.device)
            ab = diffusion.alphas_cumprod[t]
            sigma = float((1 - ab).sqrt())
            tt = torch.full((len(x0),), t, dtype=torch.long, device=x0.device)
            xt = ab.sqrt() * x0 + sigma * eps
            est, _ = diffusion.to_x0_eps(xt, tt, denoise(xt, tt))
            err = (est - x0).pow(2).mean((0, 1)).sqrt()  # per feature
            total = float((est - x0).pow(2).mean().sqrt())
            row = {"t": t, "sigma_t": round(sigma, 4), "RMS error, all features": round(total, 4),
                   "removed": f"{1 - total / sigma:.0%}"}
            row.update({f"RMS error, {f}": round(float(err[columns.index(f)]), 4) for f in a.features})
            rows.append(row)
    print_table(rows, f"x0 estimate from noised real windows, run {a.run} ({len(x0)} windows, payload units)")
    print_json("denoise_floor", rows, run=str(a.run))


if __name__ == "__main__":
    main()
