"""Where a text_timeseries model draws extra spikes (#28): for series generated from "spike"
captions, the sampler's clean-series prediction (x0, payload units, less the series' median) at
each visited step, at the fitted spike and at the extra outliers the fidelity fit finds more than
one step away from it — medians over series. If both grow together, the model has not chosen
between candidate positions when it sharpens them.

    python bench/tts_trajectory.py RUN [--n 60] [--set eval.sample.guidance=1 ...]

Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from common import print_json, print_table
from fusion_core import generation as gen
from fusion_core.recipes.text_timeseries import captions as C
from fusion_core.recipes.text_timeseries import fidelity as FI
from fusion_core.recipes.text_timeseries import properties as P
from fusion_core.recipes.text_timeseries.sample import load_run
from fusion_core.recipes.text_timeseries.train import MODALITY


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=60, help="spike captions")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. eval.sample.guidance=1")
    a = ap.parse_args()
    c, model = load_run(Path(a.run), a.set)
    s = c.eval.sample
    sampler = s.make(model.diffusion[MODALITY])
    seen: list = []
    step = sampler.step

    def recording_step(pred, i, x_t, generator=None):
        out = step(pred, i, x_t, generator=generator)
        seen.append((int(sampler.timesteps[i]), out.pred_x0.detach().float().clone()))
        return out

    sampler.step = recording_step  # one batch of n rows per step (guidance is combined before the step)
    drawn = P.draw(a.n, [p for p in P.ALL_COMBINATIONS if p.event_kind == "spike"], c.data.length, 1, seed=7)
    caps = [C.describe(p, random.Random(i)) for i, p in enumerate(drawn.properties)]
    fake = gen.generate_span(model, caps, MODALITY, (c.data.length, 1), sampler, s.guidance_args, seed=0).numpy()
    fid = FI.measure(fake, drawn.properties)
    event, extra = [], []
    for k in range(a.n):
        traj = np.stack([x[k, :, 0].numpy() for _, x in seen])  # steps, L
        traj = traj - np.median(traj, axis=1, keepdims=True)
        at = int(fid.event_at[k])
        event.append(traj[:, at])
        flagged = np.abs(FI.robust_z(fid.resid[k])[:, 0]) > FI.OUTLIER_Z
        extra += [traj[:, j] for j in np.where(flagged)[0] if abs(j - at) > 1]
    event, extra = np.array(event), np.array(extra).reshape(-1, len(seen))
    rows = [{"t": t, "x0 at the spike": float(np.median(event[:, i])),
             "x0 at extra outliers": float(np.median(extra[:, i])) if len(extra) else float("nan")}
            for i, (t, _) in enumerate(seen)]
    print_table(rows, f"{a.run} ({' '.join(a.set) or 'the run config'}): {a.n} spike captions, "
                      f"{len(extra)} extra outlier points in {int((fid.extra_outliers > 0).sum())} series")
    print_json("tts_trajectory", rows, run=a.run, overrides=a.set, extra_points=len(extra))


if __name__ == "__main__":
    main()
