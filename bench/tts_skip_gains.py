"""What a run trained with ``model.input_skip=true`` learned to put on its pointwise path (#28).

The time-series adapter's input skip adds ``g(t) * x_t`` to the prediction (zero at
initialisation). For v-prediction, a denoiser that keeps a fraction ``k`` of the data's own noise
at each point (``k = sigma^2 / (sigma^2 + s^2 / a^2)``, the Bayes shrinkage for white noise of
level ``sigma``) carries ``(a^2 - k) / (a s)`` of ``x_t`` pointwise; printed beside the learned
gains (the run's EMA weights, each of a patch's positions) for ``--sigma`` (default 0.04: the
text_timeseries low-noise captions' noise in standardized units). Gains near 0 where that
reference is ~10 say the model does not use the path (the backbone carries the pointwise part).

    python bench/tts_skip_gains.py RUN_DIR/model [--sigma 0.04] [--modality timeseries]

Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse

import torch
from common import print_json, print_table

from fusion_core import FusionModel

STEPS = (1, 3, 5, 10, 20, 50, 100, 250, 500, 900)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a model folder (a run's model/)")
    ap.add_argument("--sigma", type=float, default=0.04, help="the data's noise level for the reference gain")
    ap.add_argument("--modality", default="timeseries")
    a = ap.parse_args()
    m = FusionModel.from_pretrained(a.model)
    adapter, diffusion = m.adapters[a.modality], m.diffusion[a.modality]
    if not getattr(adapter, "input_skip", False):
        raise SystemExit(f"{a.model}: the {a.modality!r} adapter has no input skip (train with model.input_skip=true)")
    if diffusion.prediction != "v":
        raise SystemExit(f"the reference gain is for v-prediction; this model predicts {diffusion.prediction!r}")
    rows = []
    with torch.no_grad():
        for t in STEPS:
            gain = adapter.skip_gain(adapter.t_embed(torch.tensor([t])))[0].tolist()
            ab = float(diffusion.alphas_cumprod[t])
            s, al = (1 - ab) ** 0.5, ab ** 0.5
            k = a.sigma ** 2 / (a.sigma ** 2 + s * s / ab)
            rows.append({"t": t, "s_t": round(s, 4), "learned g(t)": " ".join(f"{g:+.3f}" for g in gain),
                         "max |g|": round(max(abs(g) for g in gain), 3),
                         f"pointwise path, sigma {a.sigma}": round((ab - k) / (al * s), 2)})
    print_table(rows, f"input-skip gains of {a.model} (EMA weights) against a pointwise v-prediction path")
    print_json("tts_skip_gains", rows, model=a.model, sigma=a.sigma)


if __name__ == "__main__":
    main()
