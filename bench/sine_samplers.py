"""Sampler quality on a trained built-in-sine run, measured by a closed form rather than a
classifier: each generated curve's RMS distance from the nearest sine of the generator's family
(``sine_fit.sine_fit``). Same model, same seed, same number of series for every sampler.
Prints a table and a JSON line; ratios are against the first sampler listed.

    python bench/sine_samplers.py runs/sine384 --n 300 --samplers dpm_solver:50 ddpm:250 ddpm:1000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import print_json, print_table, sync
from fusion_core import generation as gen
from fusion_core.diffusion import make_sampler
from fusion_core.engine.recipe import machine_description
from fusion_core.recipes.timeseries import sine_fit as SF
from fusion_core.recipes.timeseries.sample import load_run
from fusion_core.recipes.timeseries.train import MODALITY, window_shape


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--samplers", nargs="+", default=["dpm_solver:50", "ddpm:250"],
                   help="NAME:STEPS, NAME one of ddpm, ddim, dpm_solver (STEPS 0 = all T)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    c, model, splits = load_run(a.run_dir)
    if c.data.source != "sine":
        raise SystemExit(f"{a.run_dir} was trained on {c.data.source!r}; "
                         "the sine fit needs a run with data.source=sine")
    L, F = window_shape(c, splits)
    device = next(model.parameters()).device
    rows = []
    for spec in a.samplers:
        name, _, steps = spec.partition(":")
        sampler = make_sampler(name, model.diffusion[MODALITY], int(steps or 0) or None, clip_x0=c.sample.clip_x0 or None)
        sync(device)
        t0 = time.perf_counter()
        x = gen.sample(model, MODALITY, a.n, (L, F), sampler, seed=a.seed, chunk=c.sample.chunk).numpy()
        sync(device)
        sec = time.perf_counter() - t0
        fit = SF.sine_fit(x, c.data.sine_phase)
        rows.append({"sampler": name, "steps": len(sampler), "seconds": round(sec, 1),
                     "sine_fit": round(fit["mean"], 4),
                     f"off>{SF.SINE_OFF}": round(fit["off"], 3),
                     "windows_off": round(fit["windows_off"], 3)})
    for r in rows:
        r["time_ratio"] = round(r["seconds"] / rows[0]["seconds"], 2)
    machine = machine_description()
    print_table(rows, f"{a.run_dir}: {a.n} series of {L} x {F}, seed {a.seed}, {machine}")
    print_json("sine_samplers", rows, run=str(a.run_dir), n=a.n, length=L, machine=machine)


if __name__ == "__main__":
    main()
