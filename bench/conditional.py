"""Conditional sampling against a closed form: AR(1) windows (rho 0.9) have an exact denoiser and an
exact forecast distribution, so the spread of forecasts around the exact conditional mean can be
divided by the exact conditional variance (1 = exact). Replacement with and without RePaint
resampling (fusion_core.diffusion.repaint), several samplers. Prints a table and a JSON line.

    python bench/conditional.py [--n 4000]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import print_json, print_table
from fusion_core.diffusion import GaussianDiffusion, make_sampler
from fusion_core.diffusion.repaint import repaint
from fusion_core.engine.recipe import machine_description

SETTINGS = [("ddpm", 50, 1), ("ddim", 25, 1), ("ddim", 25, 10), ("ddim", 25, 20), ("ddpm", 50, 10),
            ("ddpm", 100, 10), ("ddpm", 25, 3), ("ddpm", 25, 10), ("ddpm", 25, 20)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4000)
    a = p.parse_args()
    L, H = 16, 8
    idx = torch.arange(L, dtype=torch.float64)
    S = 0.9 ** (idx[:, None] - idx[None]).abs()  # prior covariance of a window
    diff = GaussianDiffusion("cosine", 100, "x0")

    def denoise(x, t):  # E[x0 | x_t] for x0 ~ N(0, S), exact
        ab = diff.alphas_cumprod[int(t[0])].double()
        W = ab.sqrt() * S @ torch.linalg.inv(ab * S + (1 - ab) * torch.eye(L, dtype=torch.float64))
        return (x[..., 0].double() @ W.T)[..., None].float()

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(a.n, L, dtype=torch.float64, generator=g) @ torch.linalg.cholesky(S).T).float()[..., None]
    K = S[H:, :H] @ torch.linalg.inv(S[:H, :H])
    mean = x[:, :H, 0].double() @ K.T  # exact conditional mean and variance of the future
    var = torch.diag(S[H:, H:] - K @ S[:H, H:])
    mask = torch.zeros(a.n, L, 1, dtype=torch.bool)
    mask[:, :H] = True
    rows = []
    for name, steps, resample in SETTINGS:
        t0 = time.perf_counter()
        out = repaint(denoise, make_sampler(name, diff, steps), torch.where(mask, x, 0.0), mask, resample,
                      torch.Generator().manual_seed(0))
        spread = ((out[:, H:, 0].double() - mean) ** 2).mean(0) / var
        rows.append({"sampler": f"{name} {steps}", "resample": resample, "model calls": steps * resample,
                     "spread first": round(float(spread[0]), 2), "spread last": round(float(spread[-1]), 2),
                     "min": round(float(spread.min()), 2), "max": round(float(spread.max()), 2),
                     "seconds": round(time.perf_counter() - t0, 1)})
    machine = machine_description()
    print_table(rows, f"AR(1) forecasts of {L - H} steps from {H}, {a.n} windows, T = 100; spread / exact "
                      f"conditional variance (1 = exact); {machine}")
    print_json("conditional_ar1", rows, n=a.n, machine=machine)


if __name__ == "__main__":
    main()
