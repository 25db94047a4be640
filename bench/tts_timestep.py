"""Training-step time of the text_timeseries quick preset's model with each way the diffusion step
enters the backbone (``model.timestep``: ``add`` — the step embedding added to every series
position — against ``adaln`` — per-position adaLN modulation of every block, DiT-style), on the
same packed batches, interleaved in one run (ratios on one machine). bf16 autocast as the preset.
Prints a table and a JSON line.

    python bench/tts_timestep.py [--steps 30] [--repeats 3] [--modes add adaln]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from common import print_json, print_table
from fusion_core.engine.config import to_object
from fusion_core.engine.recipe import get_recipe, machine_description
from fusion_core.recipes.text_timeseries import data as D
from fusion_core.recipes.text_timeseries.train import build_model, encode_pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per mode and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["add", "adaln"])
    a = ap.parse_args()
    recipe = get_recipe("text_timeseries")
    base = to_object(recipe.load_config("quick"))
    pairs = D.synthetic(base.data, a.steps * base.train.batch_size, 0, "train")
    models, batches = {}, {}
    for mode in a.modes:
        c = to_object(recipe.load_config("quick", overrides=[f"model.timestep={mode}"]))
        torch.manual_seed(0)
        m = build_model(c, 1, pairs.captions)
        m.adapters["timeseries"].fit(pairs.values)
        rng = random.Random(0)
        ex = [encode_pair(m, cap, x, rng.random() < c.data.series_first, c.data.noise_limit)
              for cap, x in zip(pairs.captions, pairs.values)]
        B = c.train.batch_size
        batches[mode] = [m.collate(ex[i:i + B], max_len=c.data.max_len, pack=True, rng=random.Random(i))
                         for i in range(0, len(ex), B)]
        models[mode] = (m.train(), torch.optim.AdamW(m.parameters(), lr=1e-4))

    def run(mode: str) -> float:
        m, opt = models[mode]
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for b in batches[mode]:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = m.loss(b, generator=g)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / len(batches[mode])

    for mode in a.modes:  # warm-up
        run(mode)
    times = {mode: [] for mode in a.modes}
    for _ in range(a.repeats):
        for mode in a.modes:
            times[mode].append(run(mode))
    ref = statistics.median(times[a.modes[0]])
    rows = [{"timestep": mode, "params (M)": sum(p.numel() for p in models[mode][0].parameters()) / 1e6,
             "ms / step": 1e3 * statistics.median(times[mode]),
             f"x {a.modes[0]}": statistics.median(times[mode]) / ref,
             "5400 steps (s)": 5400 * statistics.median(times[mode])} for mode in a.modes]
    print_table(rows, f"text_timeseries quick model, training step by model.timestep ({machine_description()}; "
                      f"{a.steps} steps x {a.repeats} repeats, median)")
    print_json("tts_timestep", rows, machine=machine_description())


if __name__ == "__main__":
    main()
