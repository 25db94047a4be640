"""``fusion evaluate RUN_DIR``: held-out bits per byte, caption accuracy, text→image accuracy and a
digits-FID (built-in data), or held-out losses and images drawn from held-out captions (your data).

    fusion evaluate RUN
    fusion evaluate RUN eval.per_digit=5 eval.captions=50 eval.sample.steps=10 eval.sample.guidance=5
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fusion_core import generation as gen
from fusion_core.model import FusionModel, Item
from fusion_core.engine.recipe import machine_description, parse_command, setup_logging
from fusion_core.engine.stats import frechet_distance

from . import data as D
from .config import MMConfig
from .report import save_grid, write_report
from .sample import image_shape, load_run
from .train import HELD_OUT_DIR, encode_example, encode_prose

log = logging.getLogger("fusion_core")


class DigitClassifier(torch.nn.Module):
    """A small MLP on 8x8 digits: labels generated images; its hidden layer is the FID feature."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                        torch.nn.Linear(256, 64), torch.nn.ReLU())
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(x))


def train_classifier(train: D.Digits, epochs: int = 60, seed: int = 0) -> DigitClassifier:
    torch.manual_seed(seed)
    net = DigitClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(train.labels), generator=g)
        for i in range(0, len(perm), 128):
            idx = perm[i : i + 128]
            x = train.images[idx] + 0.05 * torch.randn(train.images[idx].shape, generator=g)
            loss = F.cross_entropy(net(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def mean_losses(model: FusionModel, examples: list[list[Item]], batch: int = 32) -> dict[str, float]:
    """Each modality's loss averaged over all its targets in ``examples`` (CE per token, MSE per
    span); diffusion noise is seeded by example index, so repeated evaluations agree."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    model.eval()
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        out = model.loss(model.collate(chunk, seeds=list(range(i, i + len(chunk)))))
        for k, v in out.parts.items():
            sums[k] = sums.get(k, 0.0) + v.item() * out.counts[k]
            counts[k] = counts.get(k, 0) + out.counts[k]
    return {k: sums[k] / counts[k] for k in sums}


def bits_per_byte(model: FusionModel, chunks: list[str], batch: int = 32) -> float:
    """Mean next-byte cross-entropy on held-out prose, in bits (byte tokenizer: 1 token = 1 byte)."""
    return mean_losses(model, [encode_prose(model, ch) for ch in chunks], batch)["text"] / math.log(2)


def evaluate(run_dir: Path, argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="fusion evaluate RUN_DIR", description="bpb, captions, text→image, "
                                "digits-FID (config values as key=value, e.g. eval.per_digit=5)")
    _, overrides = parse_command(p, argv)
    run_dir = Path(run_dir)
    setup_logging(run_dir / "train.log")
    c, model = load_run(run_dir, overrides)
    t0 = time.time()
    res = evaluate_user_data(c, model, run_dir) if c.data.source != "digits" else evaluate_digits(c, model, run_dir)
    res["eval_seconds"] = time.time() - t0
    (run_dir / "eval.json").write_text(json.dumps(res, indent=1))
    write_report(run_dir, c, res)
    for k in ("bpb", "caption_accuracy", "t2i_accuracy", "digits_fid", "classifier_accuracy",
              "heldout_examples", "heldout_text_bits_per_token", "heldout_image_mse"):
        if k in res:
            log.info("%-28s %.4f", k, res[k])
    return res


def evaluate_digits(c: MMConfig, model: FusionModel, run_dir: Path) -> dict:
    e = c.eval
    train_d, test_d = D.load_digits()
    _, prose_test = D.load_prose(chunk=min(c.data.prose_chunk, c.data.max_len - 2))
    res: dict = {"machine": machine_description(), "bpb": bits_per_byte(model, prose_test)}
    clf = train_classifier(train_d)
    with torch.no_grad():
        res["classifier_accuracy"] = float((clf(test_d.images).argmax(1) == test_d.labels).float().mean())
    if c.data.text_only:
        return res
    n = min(e.captions, len(test_d.labels))
    caps = gen.caption(model, "image", test_d.images[:n], max_new_tokens=c.sample.max_new_tokens)
    named = [D.parse_digit(cap) for cap in caps]
    res["caption_accuracy"] = float(np.mean([x == int(y) for x, y in zip(named, test_d.labels[:n])]))
    res["caption_examples"] = [(int(y), cap) for y, cap in zip(test_d.labels[:8], caps[:8])]
    sampler = e.sample.make(model.diffusion["image"])
    rng = random.Random(e.seed)
    labels = [d for d in range(10) for _ in range(e.per_digit)]
    prompts = [D.caption(d, rng) for d in labels]
    imgs = torch.cat([gen.generate_span(model, prompts[i : i + 100], "image", image_shape(c), sampler,
                                        e.sample.guidance_args, seed=e.seed + i)
                      for i in range(0, len(prompts), 100)])
    with torch.no_grad():
        pred = clf(imgs).argmax(1)
        res["t2i_accuracy"] = float((pred == torch.tensor(labels)).float().mean())
        res["digits_fid"] = frechet_distance(clf.body(test_d.images).double().numpy(),
                                             clf.body(imgs).double().numpy())
    save_grid(imgs.view(10, e.per_digit, 1, 8, 8)[:, :10].reshape(-1, 1, 8, 8), run_dir / "t2i_grid.png", cols=10)
    return res


@torch.no_grad()
def evaluate_user_data(c: MMConfig, model: FusionModel, run_dir: Path) -> dict:
    """Held-out loss per modality on your held-out examples (kept in the run folder; seeded noise,
    so runs compare), and images generated from the captions of held-out caption → image examples
    next to the real ones."""
    folder = run_dir / HELD_OUT_DIR
    held = D.load_jsonl(folder / "examples.jsonl", c.data.channels) if folder.is_dir() else []
    res: dict = {"machine": machine_description(), "heldout_examples": len(held)}
    if not held:
        log.warning("no held-out examples (data.held_out=%s): nothing to evaluate", c.data.held_out)
        return res
    losses = mean_losses(model, [encode_example(model, ex, c.data) for ex in held])
    if "text" in losses:
        res["heldout_text_bits_per_token"] = losses["text"] / math.log(2)
    if "image" in losses:
        res["heldout_image_mse"] = losses["image"]
    pairs = [(ex[0], ex[1]) for ex in held if len(ex) > 1 and isinstance(ex[0], str) and not isinstance(ex[1], str)]
    pairs = pairs[:20]  # two rows of ten: real above, generated below
    if pairs:
        e = c.eval
        fake = gen.generate_span(model, [p[0] for p in pairs], "image", image_shape(c),
                                 e.sample.make(model.diffusion["image"]), e.sample.guidance_args, seed=e.seed)
        real = torch.stack([p[1] for p in pairs])
        cols = min(10, len(pairs))
        rows = [torch.cat([real[i : i + cols], fake[i : i + cols]]) for i in range(0, len(pairs), cols)]
        save_grid(torch.cat(rows), run_dir / "heldout_grid.png", cols=cols)
        res["heldout_captions"] = [p[0] for p in pairs[:cols]]
    return res
