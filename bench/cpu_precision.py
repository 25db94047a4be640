"""CPU training precision: one recipe preset's training step in fp32, in bf16 autocast as the
library runs it (attention kept in fp32 on the CPU, :func:`fusion_core.attention.sdpa`), and in
bf16 autocast with the attention in bf16 too (plain ``F.scaled_dot_product_attention``). Same
model initialisation and batches in every mode, modes interleaved per repeat to share the
machine's noise. Prints a table and a JSON line; ratios are step time vs fp32 (< 1 is faster).

    python bench/cpu_precision.py [--recipe text_timeseries --preset quick --steps 40 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import fusion_core.attention as attention
from common import print_json, print_table
from fusion_core.engine.config import to_object
from fusion_core.engine.recipe import get_recipe
from fusion_core.engine.trainer import Trainer

MODES = {  # name: (train.precision, attention in fp32 on the CPU)
    "fp32": ("fp32", True),
    "bf16 (attention fp32)": ("bf16", True),
    "bf16 (attention bf16)": ("bf16", False),
}


def step_times(recipe, preset: str, mode: str, steps: int, warmup: int) -> list[float]:
    precision, attn_fp32 = MODES[mode]
    n = warmup + steps  # a recipe whose data.examples is 0 draws just the pairs these steps take
    c = to_object(recipe.load_config(preset, overrides=[
        f"train.precision={precision}", f"train.steps={n}", "train.progress=false",
        f"train.ckpt_every={10 * n}", f"train.log_every={10 * n}"]))
    torch.manual_seed(0)
    job = recipe.setup(c, None, None)
    saved = attention.sdpa
    attention.sdpa = saved if attn_fp32 else F.scaled_dot_product_attention
    try:
        with tempfile.TemporaryDirectory() as d:
            t = Trainer(job.model, job.dataset, job.collate, c.train, d)
            times = []
            for _ in range(warmup + steps):
                t0 = time.perf_counter()
                t.train_step()
                times.append(time.perf_counter() - t0)
    finally:
        attention.sdpa = saved
    return times[warmup:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", default="text_timeseries")
    p.add_argument("--preset", default="quick")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(2)
    recipe = get_recipe(a.recipe)
    rows = []
    for r in range(a.repeats):
        row = {"repeat": r}
        for mode in MODES:
            row[f"{mode} ms"] = 1e3 * statistics.median(step_times(recipe, a.preset, mode, a.steps, a.warmup))
        for mode in list(MODES)[1:]:
            row[f"{mode} / fp32"] = row[f"{mode} ms"] / row["fp32 ms"]
        rows.append(row)
    med = {m: statistics.median(x[f"{m} / fp32"] for x in rows) for m in list(MODES)[1:]}
    print_table(rows, f"{a.recipe} --preset {a.preset}: median training step over {a.steps} steps "
                      f"(CPU, {torch.get_num_threads()} threads, torch {torch.__version__})")
    for m, v in med.items():
        print(f"median {m} / fp32 step time: {v:.3f}")
    print_json("cpu_precision", rows, median_ratio=med)


if __name__ == "__main__":
    main()
