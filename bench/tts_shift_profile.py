"""Where the fit's extra outliers of level-shift captions come from (#28): for the first N seen
level-shift captions of a trained text_timeseries run, one generated series each (the run's
sampler and guidance, or each ``--variant``'s overrides of them), measured by
recipes/text_timeseries/fidelity.py against the real series of the same captions, split by the
captioned noise level: the share of series the fit flags, the residual's noise level and its
lag-1 autocorrelation (white noise: ~0) — also split into the neighbour pairs inside one of the
model's patches and those across a patch border: correlation only inside patches points at the
patch's output layer, correlation across borders too at the model as a whole — and how far the
step before the shift sits from the fitted step (median |residual| / shift size: a ramp puts it
off the step), with the flagged share split by whether the shift starts a patch.

    python bench/tts_shift_profile.py RUN [--n 100] [--pool 300] [--variant "" "eval.sample.steps=1000" ...] [--set sample.use_ema=false]

A variant is a space-separated list of sampling overrides (``eval.sample.*``; "" = the run's own
settings); every variant draws for the same captions with the same model. Prints a table and a
JSON line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import print_json, print_table
from fusion_core.recipes.text_timeseries import fidelity as FI
from fusion_core.recipes.text_timeseries import recipe
from fusion_core.recipes.text_timeseries.evaluate import text_to_series
from fusion_core.recipes.text_timeseries.sample import load_run
from fusion_core.recipes.text_timeseries.train import test_pairs


def acf1_by_patch(r: np.ndarray, patch: int) -> tuple[float, float]:
    """Lag-1 autocorrelation of residuals ``r`` (N, L, F) over the neighbour pairs inside a patch of
    ``patch`` steps and over those across a patch border (each series centred, pooled over
    series and channels; ``nan`` where a kind has no pairs, e.g. inside patches of 1)."""
    r = r - r.mean(axis=1, keepdims=True)
    prod = (r[:, 1:] * r[:, :-1]).mean(axis=(0, 2))  # pair (i, i + 1), i = 0 .. L - 2
    var = float((r * r).mean())
    across = (np.arange(1, r.shape[1]) % patch) == 0  # i + 1 starts a patch
    def share(m):
        return float(prod[m].mean() / var) if m.any() and var > 0 else float("nan")
    return share(~across), share(across)


def profile(x: np.ndarray, props: list, family: str, patch: int = 1) -> dict:
    """Per noise level: n, flagged share, residual noise and lag-1 acf medians (also inside /
    across the model's patches, pooled), step-before miss, flagged share of shifts that start a
    patch and of those inside one."""
    fid = FI.measure(x, props, family)
    at = fid.event_at.astype(int)
    before = np.array([np.abs(fid.resid[s][at[s] - 1]).mean() / fid.event_size[s] for s in range(len(x))])
    border = at % patch == 0
    out = {}
    for level in ("low", "high"):
        m = np.array([p.noise == level for p in props])
        if not m.any():
            continue
        out[level] = {"n": int(m.sum()), "flagged": float((fid.extra_outliers[m] > 0).mean()),
                      "away": float((fid.extra_away[m] > 0).mean()), "noise": float(np.median(fid.noise[m])),
                      "acf1": float(np.median(fid.resid_acf1[m])),
                      **dict(zip(("acf1 in patch", "acf1 across"), acf1_by_patch(fid.resid[m], patch))),
                      "miss before": float(np.median(before[m])),
                      # shifts that start a patch vs those inside one (real data: no difference)
                      **{f"flagged, shift {w}": float((fid.extra_outliers[m & (border == b)] > 0).mean())
                         if (m & (border == b)).any() else float("nan")
                         for w, b in (("at a border", True), ("inside", False))}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=100, help="seen level-shift captions (at most those among --pool)")
    ap.add_argument("--pool", type=int, default=300, help="seen captions drawn (the run's eval.n per group)")
    ap.add_argument("--variant", nargs="+", default=[""],
                    help="sampling overrides per variant, e.g. 'eval.sample.steps=1000' ('' = the run's)")
    ap.add_argument("--set", nargs="*", default=[],
                    help="overrides for loading the model and every variant, e.g. sample.use_ema=false")
    a = ap.parse_args()
    base = [f"eval.n={a.pool}", "eval.progress=false", *a.set]
    c, model = load_run(a.run, base)  # one model and one caption set for every variant
    test = test_pairs(c, a.run)
    idx = [i for i, g in enumerate(test.groups) if g == "seen" and test.properties[i].event_kind == "shift"][: a.n]
    props, captions = [test.properties[i] for i in idx], [test.captions[i] for i in idx]
    rows = [{"series": "real", "noise level": level, **r, "seconds": 0.0}
            for level, r in profile(test.values[idx], props, c.data.family, c.model.patch).items()]
    for variant in a.variant:
        cv = recipe.run_config(a.run, [*base, *variant.split()])
        t0 = time.time()
        fake = text_to_series(model, cv, captions, test.values.shape[1:], c.eval.seed + 1000)
        seconds = time.time() - t0
        s = cv.eval.sample
        name = f"{s.sampler} {s.steps}" + (f" {s.spacing}" if s.spacing else "") + (f" [{variant}]" if variant else "")
        for level, r in profile(fake, props, c.data.family, c.model.patch).items():
            rows.append({"series": name, "noise level": level, **r, "seconds": seconds})
        print(rows[-1], flush=True)
    print_table(rows, f"{len(idx)} level-shift captions of {a.run}: the fit's flags by noise level (generated vs real)")
    print_json("tts_shift_profile", rows, run=str(a.run))


if __name__ == "__main__":
    main()
