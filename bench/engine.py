"""Engine overhead: the shared Trainer vs a bare PyTorch loop on the same model, data and batches
(the toy recipe's model). Prints a table and a JSON line; aim: < 5% fewer tokens/s.

    python bench/engine.py [--steps 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from common import print_json, print_table
from fusion_core.engine.config import to_object
from fusion_core.engine.recipe import get_recipe
from fusion_core.engine.trainer import Trainer, build_optimizer


def setup(steps):
    recipe = get_recipe("toy")
    c = to_object(recipe.load_config("quick", overrides=[f"train.steps={steps}", "train.progress=false",
                                                         f"train.ckpt_every={10 * steps}", "train.log_every=10"]))
    torch.manual_seed(0)
    job = recipe.setup(c, None, None)
    return c, job.model, job.dataset


def bare(steps):
    c, model, data = setup(steps)
    opt, sched = build_optimizer(model, c.train.optim, steps)
    bs, n, tokens = c.train.batch_size, len(data), 0
    t0 = time.perf_counter()
    for step in range(steps):
        idx = [(step * bs + i) % n for i in range(bs)]
        batch = model.collate([data[i] for i in idx], max_len=c.data.max_len, pack=True,
                              seeds=[step * bs + i for i in range(bs)])
        tokens += int((~batch.layout.padding).sum())
        out = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.train.optim.grad_clip)
        opt.step()
        sched.step()
        out.loss.item()
    return tokens / (time.perf_counter() - t0)


def engine(steps):
    c, model, data = setup(steps)

    def collate(model, examples, seeds):
        return model.collate(examples, max_len=c.data.max_len, pack=True, seeds=seeds)

    with tempfile.TemporaryDirectory() as d:
        t = Trainer(model, data, collate, c.train, d)
        t0 = time.perf_counter()
        t.fit()
        dt = time.perf_counter() - t0
    # the trainer logs tokens/s per interval; recompute over the whole run from the batches
    total = sum(int((~model.collate(ex, max_len=c.data.max_len, pack=True).layout.padding).sum())
                for step in range(steps) for ex, _ in t.micro_batches(step))
    return total / dt


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(2)
    rows = []
    for r in range(a.repeats):  # interleave to share machine noise
        rows.append({"repeat": r, "bare tokens/s": bare(a.steps), "engine tokens/s": engine(a.steps)})
        rows[-1]["engine/bare"] = rows[-1]["engine tokens/s"] / rows[-1]["bare tokens/s"]
    med = sorted(x["engine/bare"] for x in rows)[len(rows) // 2]
    print_table(rows, f"engine vs bare loop, toy model, {a.steps} steps (CPU, {torch.get_num_threads()} threads)")
    print(f"median engine/bare tokens/s: {med:.3f} (overhead {100 * (1 - med):.1f}%)")
    print_json("engine_overhead", rows, median_ratio=med)


if __name__ == "__main__":
    main()
