"""Where the fit's extra outliers of level-shift captions come from (#28): for the first N seen
level-shift captions of a trained text_timeseries run, one generated series each (the run's
sampler and guidance, or each ``--variant``'s overrides of them), measured by
recipes/text_timeseries/fidelity.py against the real series of the same captions, split by the
captioned noise level: the share of series the fit flags, the residual's noise level and its
lag-1 autocorrelation (white noise: ~0), and how far the step before the shift sits from the
fitted step (median |residual| / shift size: a ramp puts it off the step).

    python bench/tts_shift_profile.py RUN [--n 100] [--variant "" "eval.sample.steps=1000" ...]

A variant is a space-separated list of config overrides ("" = the run's own settings). Prints a
table and a JSON line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import print_json, print_table
from fusion_core.recipes.text_timeseries import fidelity as FI
from fusion_core.recipes.text_timeseries.evaluate import text_to_series
from fusion_core.recipes.text_timeseries.sample import load_run
from fusion_core.recipes.text_timeseries.train import test_pairs


def profile(x: np.ndarray, props: list, family: str) -> dict:
    """Per noise level: n, flagged share, residual noise and lag-1 acf medians, step-before miss."""
    fid = FI.measure(x, props, family)
    at = fid.event_at.astype(int)
    before = np.array([np.abs(fid.resid[s][at[s] - 1]).mean() / fid.event_size[s] for s in range(len(x))])
    out = {}
    for level in ("low", "high"):
        m = np.array([p.noise == level for p in props])
        if not m.any():
            continue
        out[level] = {"n": int(m.sum()), "flagged": float((fid.extra_outliers[m] > 0).mean()),
                      "away": float((fid.extra_away[m] > 0).mean()), "noise": float(np.median(fid.noise[m])),
                      "acf1": float(np.median(fid.resid_acf1[m])), "miss before": float(np.median(before[m]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=100, help="seen level-shift captions")
    ap.add_argument("--variant", nargs="+", default=[""], help="config overrides per variant ('' = the run's)")
    a = ap.parse_args()
    rows = []
    real_done = False
    for variant in a.variant:
        c, model = load_run(a.run, ["eval.n=300", "eval.progress=false", *variant.split()])
        test = test_pairs(c, a.run)
        idx = [i for i, g in enumerate(test.groups) if g == "seen" and test.properties[i].event_kind == "shift"][: a.n]
        props = [test.properties[i] for i in idx]
        if not real_done:
            for level, r in profile(test.values[idx], props, c.data.family).items():
                rows.append({"series": "real", "noise level": level, **r, "seconds": 0.0})
            real_done = True
        t0 = time.time()
        fake = text_to_series(model, c, [test.captions[i] for i in idx], test.values.shape[1:], c.eval.seed + 1000)
        seconds = time.time() - t0
        s = c.eval.sample
        name = f"{s.sampler} {s.steps}" + (f" {s.spacing}" if s.spacing else "") + (f" [{variant}]" if variant else "")
        for level, r in profile(fake, props, c.data.family).items():
            rows.append({"series": name, "noise level": level, **r, "seconds": seconds})
        print(rows[-2], rows[-1], flush=True)
    print_table(rows, f"level-shift captions of {a.run}: the fit's flags by noise level (generated vs real)")
    print_json("tts_shift_profile", rows, run=str(a.run))


if __name__ == "__main__":
    main()
