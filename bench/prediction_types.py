"""Which prediction type for a new continuous modality? (#26, docs/writing-an-adapter.md)

The issue's researcher: a pen-stroke adapter ((n, 2) dx/dy, 4 points per position) trained next to
text drew lines for "a line" but no circles for "a circle" with the default eps-prediction in 400
steps; x0 did. Here the same comparison through the `mixed` recipe (the adapter of
tests/data/pen_adapter.py, by dotted path with trust): 600 captioned strokes (circles of random
phase, lines of random angle), the same model and budget for each prediction type and schedule,
then 32 strokes drawn for each caption (DDIM 25 steps) and scored by straightness
(|end - start| / length: ~0 for a closed circle, 1 for a line): a stroke is right when a circle's
straightness is below 0.5 and a line's above it.

    python bench/prediction_types.py [--steps 400] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "data"))
from common import print_table  # noqa: E402
from pen_adapter import circle, line, straightness  # noqa: E402

from fusion_core import generation as gen  # noqa: E402
from fusion_core.engine.recipe import get_recipe, load_model, trusting_remote_code  # noqa: E402


def strokes(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = "circle" if i % 2 else "line"
        s = circle(phase=rng.uniform(0, 6.3)) if kind == "circle" else line(angle=rng.uniform(0, 6.3))
        out.append([{"text": f"a {kind}"}, {"pen": s.round(5).tolist()}])
    return out


def score(model, c, n: int = 32) -> dict:
    s = c.sample
    out = {}
    for kind in ("circle", "line"):
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
        rows = gen.generate(model, [f"a {kind}"] * n, s, {"pen": (16, 2)}, force="pen", max_new_tokens=0,
                            generator=gens)
        st = np.array([straightness(r.spans("pen")[0]) for r in rows])
        right = (st < 0.5) if kind == "circle" else (st > 0.5)
        out[kind] = {"straightness": float(np.median(st)), "right": float(right.mean())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    recipe = get_recipe("mixed")
    data = strokes(600, 0)
    rows = []
    for pred, schedule in (("eps", "cosine"), ("v", "cosine"), ("x0", "cosine"), ("eps", "linear")):
        for seed in a.seeds:
            adapters = ("model.adapters={text: {class: text}, pen: {class: 'pen_adapter:PenAdapter', "
                        f"diffusion: {{prediction: {pred}, schedule: {schedule}}}}}}}")
            with tempfile.TemporaryDirectory() as tmp, trusting_remote_code():
                t0 = time.time()
                run = recipe.run("quick", [adapters, f"run_dir={tmp}/run", f"train.steps={a.steps}",
                                           "train.progress=false", "eval.after_train=false", f"train.seed={seed}",
                                           "model.dim=64", "model.n_layers=3", "train.ckpt_every=100000",
                                           "sample.sampler=ddim", "sample.steps=25", "sample.clip_x0=0"], data=data)
                secs = time.time() - t0
                c = recipe.run_config(run)
                model = load_model(run, c, weights="model", device="cpu")
                r = score(model, c)
            rows.append({"prediction": pred, "schedule": schedule, "seed": seed,
                         "circle right": r["circle"]["right"], "circle straightness": r["circle"]["straightness"],
                         "line right": r["line"]["right"], "line straightness": r["line"]["straightness"],
                         "train_s": secs})
            print(rows[-1], flush=True)
    print_table(rows, f"pen strokes next to text, {a.steps} steps of 32, 64 wide x 3 layers; 32 strokes per "
                      "caption (DDIM 25); 'right' = share with straightness on the caption's side of 0.5")
    line_ = json.dumps({"bench": "prediction_types", "steps": a.steps, "rows": rows})
    print(line_)
    if a.json:
        Path(a.json).write_text(line_ + "\n")


if __name__ == "__main__":
    main()
