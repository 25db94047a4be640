"""README command 1's job (``timeseries --preset quick``: a 0.48 M-parameter model, batch 64,
windows of 24 x 5) is launch-bound on a GPU: dozens of tiny kernels per step. This measures, in one
run on one device, what replaying them as CUDA graphs buys:

- training: the Trainer with eager blocks, ``train.compile`` (default mode) and
  ``train.compile_mode=reduce-overhead`` (compiled blocks replayed as CUDA graphs); steps/s after a
  warm-up, projected to the preset's 4000 steps;
- sampling 3000 series with DPM-Solver++ 50 steps, eager vs ``sample.cuda_graphs`` (the
  denoiser replayed as one graph per chunk shape), with the largest difference between the two.

Prints tables and a JSON line; on the CPU the graph rows are the eager path (nothing to capture).

    python bench/ts_launch.py --device cuda [--train-steps 300] [--modes eager default reduce-overhead]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from common import print_json, print_table, sync
from fusion_core import generation as gen
from fusion_core.engine.config import to_object
from fusion_core.engine.recipe import get_recipe
from fusion_core.engine.trainer import Trainer


def _config(device: str, overrides=()):
    recipe = get_recipe("timeseries")
    c = to_object(recipe.load_config("quick", overrides=[f"train.device={device}", "train.progress=false",
                                                         "train.ckpt_every=1000000", *overrides]))
    return recipe, c


def train_rate(device: str, mode: str, steps: int, warmup: int) -> dict:
    # the preset's schedule (4000 steps); only the first warmup + steps are run
    over = [f"train.steps={max(4000, steps + warmup)}"]
    if mode != "eager":
        over += ["train.compile=true", f"train.compile_mode={mode}"]
    recipe, c = _config(device, over)
    torch.manual_seed(0)
    job = recipe.setup(c, None, None)
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(job.model, job.dataset, job.collate, c.train, d)
        t0 = time.perf_counter()
        while t.step < warmup:  # compilation and graph capture happen here
            t.train_step()
        sync(t.info.device)
        t1 = time.perf_counter()
        while t.step < warmup + steps:
            rec = t.train_step()
        float(rec["values"][-2])  # the last loss: waits for the device
        t2 = time.perf_counter()
    rate = steps / (t2 - t1)
    return {"training": mode, "warm-up s": t1 - t0, "steps/s": rate, "4000 steps, s": 4000 / rate + (t1 - t0)}


@torch.no_grad()
def sample_time(device: str, n: int, graphs: bool) -> tuple[dict, torch.Tensor]:
    recipe, c = _config(device)
    torch.manual_seed(0)
    model = recipe.setup(c, None, None).model.to(device).eval()
    sampler = c.sample.make(model.diffusion["timeseries"])
    shape = (c.data.length, c.data.sine_features)
    gen.sample(model, "timeseries", c.sample.chunk, shape, sampler, seed=1, chunk=c.sample.chunk,
               cuda_graphs=graphs)  # warm-up (and the captures)
    sync(torch.device(device))
    t0 = time.perf_counter()
    x = gen.sample(model, "timeseries", n, shape, sampler, seed=0, chunk=c.sample.chunk, cuda_graphs=graphs)
    dt = time.perf_counter() - t0
    return {"sampling": "cuda graphs" if graphs else "eager", "series": n, "s": dt}, x


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--modes", nargs="+", default=["eager", "default", "reduce-overhead"])
    p.add_argument("--n", type=int, default=3000)
    a = p.parse_args()
    train_rows = [train_rate(a.device, m, a.train_steps, a.warmup) for m in a.modes]
    base = train_rows[0]["steps/s"]
    for r in train_rows:
        r["speed vs first"] = r["steps/s"] / base
    print_table(train_rows, f"timeseries --preset quick, Trainer steps ({a.device})")
    eager, x0 = sample_time(a.device, a.n, False)
    graphed, x1 = sample_time(a.device, a.n, True)
    graphed["max |diff| vs eager"] = float((x0 - x1).abs().max())
    graphed["speed vs eager"] = eager["s"] / graphed["s"]
    print_table([eager, graphed], f"sampling {a.n} series, DPM-Solver++ 50 steps ({a.device})")
    print_json("ts_launch", train_rows + [eager, graphed], device=a.device)


if __name__ == "__main__":
    main()
