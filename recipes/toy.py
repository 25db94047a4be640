"""Recipe "toy": a tiny text + image FusionModel on generated captioned images (one bright bar,
"horizontal" or "vertical"), trained by the shared engine in about a minute on a CPU. It exercises
every moving part — packing, LM + lambda x diffusion loss, checkpoints, resume, sampling against a
cached caption — and is what the engine's tests run.

    fusion run toy --preset quick
    fusion sample RUN_DIR
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fusion_core.generation import SampleArgs, generate_span, interleave
from fusion_core.model import FusionModel, Item
from fusion_core.modalities.image import ImageAdapter
from fusion_core.modalities.text import TextAdapter
from fusion_core.engine.config import check_image_fits_row
from fusion_core.engine.recipe import Recipe, TrainJob, load_model, parse_command
from fusion_core.engine.trainer import OptimArgs, TrainArgs
from fusion_core.transformer import TransformerArgs, backbone_args

CAPTIONS = ("horizontal", "vertical")


@dataclass
class ToyModelArgs(TransformerArgs):
    dim: int = 64
    n_layers: int = 3
    n_heads: int = 4
    patch_size: int = 2


@dataclass
class ToyDataArgs:
    examples: int = 512
    image_size: int = 8
    max_len: int = 128

    def __post_init__(self):
        if self.examples < 1 or self.image_size < 3 or self.max_len < 1:
            raise ValueError(f"need data.examples >= 1, data.image_size >= 3 (a bar inside a border) and "
                             f"data.max_len >= 1; got {self.examples}, {self.image_size}, {self.max_len}")


@dataclass
class ToyConfig:
    recipe: str = "toy"
    run_dir: str = ""
    model: ToyModelArgs = field(default_factory=ToyModelArgs)
    data: ToyDataArgs = field(default_factory=ToyDataArgs)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(
        steps=300, batch_size=16, ckpt_every=100, log_every=10,
        optim=OptimArgs(lr=2e-3, min_lr=1e-4, warmup=20, weight_decay=0.0)))
    sample: SampleArgs = field(default_factory=lambda: SampleArgs(steps=25))

    def __post_init__(self):
        check_image_fits_row(self.data.image_size, self.model.patch_size, self.data.max_len)


def bars(kind: str, rng: random.Random, size: int) -> torch.Tensor:
    """A ``(1, size, size)`` image in [0, 1] with one bright bar at a random row or column."""
    img = torch.zeros(1, size, size)
    k = rng.randrange(1, size - 1)
    if kind == "horizontal":
        img[0, k] = 1.0
    else:
        img[0, :, k] = 1.0
    return img


def build_model(c: ToyConfig) -> FusionModel:
    image = ImageAdapter(c.model.dim, channels=1, patch_size=c.model.patch_size)
    return FusionModel(backbone_args(c.model), [TextAdapter(c.model.dim), image])


def setup(c: ToyConfig, run_dir: Path, data=None) -> TrainJob:
    if data is not None:
        raise ValueError("the toy recipe generates its own data")
    model = build_model(c)
    rng = random.Random(c.train.seed)
    examples: list[list[Item]] = []
    for _ in range(c.data.examples):
        cap = rng.choice(CAPTIONS)
        examples.append(interleave(model, [cap, ("image", bars(cap, rng, c.data.image_size))]))
    max_len = c.data.max_len

    def collate(model, batch, seeds):
        return model.collate(batch, max_len=max_len, pack=True, seeds=seeds)

    return TrainJob(model, examples, collate, f"{len(examples)} captioned bars")


def sample(run_dir: Path, argv: list[str]) -> Path:
    p = argparse.ArgumentParser(prog="fusion sample RUN_DIR", description="draw one image per caption "
                                "(config values as key=value, e.g. sample.steps=10)")
    _, overrides = parse_command(p, argv)
    c = recipe.run_config(run_dir, overrides)
    model = load_model(run_dir, c)
    s = c.data.image_size
    imgs = generate_span(model, list(CAPTIONS), "image", (1, s, s), c.sample.make(model.diffusion["image"]),
                         seed=c.sample.seed)
    lines = []
    for cap, img in zip(CAPTIONS, imgs):
        lines.append(f'"{cap}":')
        lines += ["".join("#" if v > 0.5 else "." for v in row.tolist()) for row in img[0]]
    out = Path(run_dir) / "samples.txt"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


recipe = Recipe(
    name="toy",
    description="tiny text + image model on generated captioned bars (a CPU minute; engine smoke test)",
    config=ToyConfig,
    presets_dir=Path(__file__).parent / "presets" / "toy",
    setup=setup,
    sample=sample,
)
