"""Guidance schemes for text → series (#28): adherence against fidelity, one trained run, one
machine. For each scheme, a series from every test caption (the run's eval.n per group), then:
per-property accuracy measured back (seen: lowest property and all four; held-out
combinations: lowest property), and on the seen captions the fidelity measures of
recipes/text_timeseries/fidelity.py as generated / real ratios (extra-outlier share, event
size, cycle amplitude — fit and second method), the residual's lag-1 autocorrelation, and the
discriminative score of generated vs real series sharing captions. The real-vs-real row
(a second real series drawn per caption) is the floor.

    python bench/tts_guidance.py RUN [--schemes 3 1 3:r0.7 3:i0-0.6 ...] [--n 300] [--seeds 0 1]
                                     [--set eval.sample.steps=50 ...]

A scheme is SCALE[:iLO-HI][:rPHI] (interval as fractions of T; rescale in [0, 1]). Prints a
table and a JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from common import print_json, print_table
from fusion_core.diffusion import Guidance
from fusion_core.recipes.text_timeseries import estimator as E
from fusion_core.recipes.text_timeseries import fidelity as FI
from fusion_core.recipes.text_timeseries import properties as P
from fusion_core.recipes.text_timeseries.evaluate import text_to_series
from fusion_core.recipes.text_timeseries.sample import load_run
from fusion_core.recipes.text_timeseries.train import test_pairs
from fusion_core.recipes.timeseries.metrics import discriminative_score

DEFAULT = ["3", "1", "2", "3:r0.7", "3:r1", "3:i0-0.6", "3:i0-0.4", "5:i0-0.4", "3:i0.1-0.7"]


def parse_scheme(text: str) -> Guidance:
    parts = text.split(":")
    kw = {}
    for p in parts[1:]:
        if p.startswith("i"):
            lo, hi = p[1:].split("-")
            kw["interval"] = (float(lo), float(hi))
        elif p.startswith("r"):
            kw["rescale"] = float(p[1:])
        else:
            raise SystemExit(f"bad scheme part {p!r} in {text!r}: iLO-HI or rPHI")
    return Guidance(float(parts[0]), **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--schemes", nargs="+", default=DEFAULT)
    ap.add_argument("--n", type=int, default=300, help="test captions per group")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampling seeds (noise) per scheme")
    ap.add_argument("--disc-iters", type=int, default=1000)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. eval.sample.steps=50")
    a = ap.parse_args()
    c, model = load_run(Path(a.run), [f"eval.n={a.n}", "eval.progress=false", *a.set])
    test = test_pairs(c, Path(a.run))
    shape = test.values.shape[1:]
    groups = sorted(set(test.groups), key=lambda g: (g != "seen", g))
    rows_of = {g: [i for i, gi in enumerate(test.groups) if gi == g] for g in groups}
    seen = test.subset(rows_of["seen"])
    # a second real series per caption
    again = P.generate(seen.properties, shape[0], shape[1], seed=12345, family=c.data.family).values

    def fidelity_row(name: str, fake_seen: np.ndarray, acc: dict | None, seconds: float, seed: int) -> dict:
        f = FI.compare(seen.values, fake_seen, seen.properties, c.data.family)["groups"]["all"]
        row = {"scheme": name, "seed": seed}
        if acc is not None:
            row |= {"seen min": min(v for k, v in acc["seen"].items() if k != "all"), "seen all": acc["seen"]["all"]}
            if "held-out" in acc:
                row["held-out min"] = min(v for k, v in acc["held-out"].items() if k != "all")
        else:
            row |= {"seen min": float("nan"), "seen all": float("nan"), "held-out min": float("nan")}
        row |= {"extra outliers": f["extra_outliers"]["generated"], "(2nd)": f["extra_outliers"]["second"]["generated"],
                "away from event": f["extra_away"]["generated"],
                "event x": FI.ratio(f, "event_size"), "event x (2nd)": FI.ratio(f, "event_size", True),
                "amplitude x": FI.ratio(f, "amplitude"), "amplitude x (2nd)": FI.ratio(f, "amplitude", True),
                "acf1": f["resid_acf1"]["generated"],
                "disc": discriminative_score(seen.values, fake_seen, iters=a.disc_iters, seed=seed),
                "seconds": seconds}
        return row

    f_real = FI.compare(seen.values, again, seen.properties, c.data.family)["groups"]["all"]
    rows = [fidelity_row("real vs real", again, None, 0.0, 0)]
    print(f"real: series with extra outliers {f_real['extra_outliers']['real']:.4f} "
          f"(second method {f_real['extra_outliers']['second']['real']:.4f}); event size median "
          f"{f_real['event_size']['real']:.3f}, amplitude median {f_real['amplitude']['real']:.3f}", flush=True)
    for text in a.schemes:
        g = parse_scheme(text)
        for seed in a.seeds:
            sample = dataclasses.replace(c.eval.sample, guidance=g.scale, guidance_interval=list(g.interval),
                                         guidance_rescale=g.rescale)
            cfg = dataclasses.replace(c, eval=dataclasses.replace(c.eval, sample=sample))
            t0 = time.time()
            fake = text_to_series(model, cfg, test.captions, shape, c.eval.seed + 1000 * seed)
            seconds = time.time() - t0
            acc = {gname: P.accuracy([test.properties[i] for i in idx], E.estimate(fake[idx], c.data.family))
                   for gname, idx in rows_of.items()}
            rows.append(fidelity_row(text, fake[rows_of["seen"]], acc, seconds, seed))
            print(rows[-1], flush=True)
    print_table(rows, f"guidance schemes, run {a.run} ({len(seen)} seen captions; ratios generated / real)")
    print_json("tts_guidance", rows, run=str(a.run), real_extra_outliers=f_real["extra_outliers"]["real"])


if __name__ == "__main__":
    main()
