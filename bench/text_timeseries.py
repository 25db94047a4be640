"""Text → series sampling time per series against the timeseries recipe's unconditional sampling,
at equal backbone, series length, sampler and steps (one run, same machine): the caption is
encoded once into the KV cache, so every denoising step costs about what an unconditional one
does; classifier-free guidance doubles the batch. Random weights (time does not depend on them).
Prints a table and a JSON line.

    python bench/text_timeseries.py [--n 256] [--steps 25] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from common import print_json, print_table
from fusion_core import generation as gen
from fusion_core.engine.config import to_object
from fusion_core.diffusion import make_sampler
from fusion_core.engine.recipe import get_recipe, machine_description
from fusion_core.recipes.text_timeseries import captions as C
from fusion_core.recipes.text_timeseries import properties as P
from fusion_core.recipes.text_timeseries.train import MODALITY, build_model
from fusion_core.recipes.timeseries.train import build_model as build_ts_model


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256, help="series per call")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="quick")
    a = p.parse_args()
    torch.manual_seed(0)
    c = to_object(get_recipe("text_timeseries").load_config(a.preset))
    L = c.data.length
    rng = random.Random(0)
    captions = [C.describe(rng.choice(P.ALL_COMBINATIONS), rng) for _ in range(a.n)]
    ours = build_model(c, 1, captions).eval()
    ours.adapters[MODALITY].fit(torch.linspace(-3, 3, L)[:, None])
    ts_cfg = to_object(get_recipe("timeseries").load_config(None, overrides=[
        f"model.{k}={v}" for k, v in (("dim", c.model.dim), ("n_layers", c.model.n_layers),
                                      ("n_heads", c.model.n_heads), ("patch", c.model.patch),
                                      ("timestep", c.model.timestep), ("dropout", 0.0),
                                      ("qk_norm", c.model.qk_norm))] + ["model.ffn_dim=null"]))
    ts = build_ts_model(ts_cfg, 1).eval()
    ts.adapters["timeseries"].fit(torch.linspace(-3, 3, L)[:, None])
    shape = (L, 1)

    def sampler(model):
        return make_sampler("dpm_solver", model.diffusion[MODALITY], a.steps, clip_x0=1.0)

    runs = {
        "unconditional (timeseries recipe)": lambda: gen.sample(ts, "timeseries", a.n, shape, sampler(ts), chunk=a.n),
        "text → series, no guidance": lambda: gen.generate_span(ours, captions, MODALITY, shape, sampler(ours)),
        "text → series, CFG": lambda: gen.generate_span(ours, captions, MODALITY, shape, sampler(ours), guidance=3.0),
    }
    base = None
    rows = []
    for name, fn in runs.items():
        secs = timed(fn, a.repeats)
        base = base or secs
        rows.append({"sampling": name, "ms per series": round(1000 * secs / a.n, 3), "ratio": round(secs / base, 2)})
    machine = machine_description()
    text = ours.adapters["text"]
    mean_len = sum(len(text.encode(s)) for s in captions) / len(captions)
    print_table(rows, f"{a.n} series of {L} steps, dpm_solver {a.steps} steps, backbone {c.model.dim} x "
                      f"{c.model.n_layers} ({a.preset} preset), captions {mean_len:.0f} tokens ({c.model.tokenizer}); {machine}")
    print_json("text_timeseries_sampling", rows, n=a.n, steps=a.steps, machine=machine)


if __name__ == "__main__":
    main()
