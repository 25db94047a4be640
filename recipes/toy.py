"""Recipe "toy": a tiny text + image FusionModel on generated captioned images (one bright bar,
"horizontal" or "vertical"), trained by the shared engine in about a minute on a CPU. It exercises
every moving part — packing, LM + lambda x diffusion loss, checkpoints, resume, sampling against a
cached caption — and is what the engine's tests run.

    fusion run toy --preset quick
    fusion sample RUN_DIR
"""

from __future__ import annotations

import argparse
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from fusion_core.checkpoint import load_trained
from fusion_core.config import load_config, to_object, to_yaml
from fusion_core.diffusion import make_sampler
from fusion_core.distributed import init_distributed, shutdown
from fusion_core.model import FusionModel, Item
from fusion_core.recipe import Recipe, prepare_run_dir
from fusion_core.trainer import OptimArgs, Trainer, TrainArgs, seed_everything
from fusion_core.transformer import TransformerArgs
from fusion_core.modalities.image import ImageAdapter
from fusion_core.modalities.text import TextAdapter

log = logging.getLogger("fusion_core")
CAPTIONS = ("horizontal", "vertical")


@dataclass
class ToyModelArgs:
    dim: int = 64
    n_layers: int = 3
    n_heads: int = 4
    patch_size: int = 2
    dropout: float = 0.0


@dataclass
class ToyDataArgs:
    examples: int = 512
    image_size: int = 8
    max_len: int = 128


@dataclass
class ToyConfig:
    recipe: str = "toy"
    run_dir: str = ""
    model: ToyModelArgs = field(default_factory=ToyModelArgs)
    data: ToyDataArgs = field(default_factory=ToyDataArgs)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(
        steps=300, batch_size=16, ckpt_every=100, log_every=10,
        optim=OptimArgs(lr=2e-3, min_lr=1e-4, warmup=20, weight_decay=0.0)))


def bars(kind: str, rng: random.Random, size: int) -> torch.Tensor:
    """A ``(1, size, size)`` image in [0, 1] with one bright bar at a random row or column."""
    img = torch.zeros(1, size, size)
    k = rng.randrange(1, size - 1)
    if kind == "horizontal":
        img[0, k] = 1.0
    else:
        img[0, :, k] = 1.0
    return img


def build_model(cfg) -> FusionModel:
    m = cfg.model
    text = TextAdapter(m.dim)
    image = ImageAdapter(m.dim, channels=1, patch_size=m.patch_size)
    return FusionModel(TransformerArgs(dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads,
                                       dropout=m.dropout), [text, image])


def build_dataset(cfg, model: FusionModel) -> list[list[Item]]:
    text, image = model.adapters["text"], model.adapters["image"]
    rng = random.Random(cfg.train.seed)
    out = []
    for _ in range(cfg.data.examples):
        cap = rng.choice(CAPTIONS)
        out.append([Item("text", text.encode(cap, bos=True, append=["<boi:image>"])),
                    Item("image", image.encode(bars(cap, rng, cfg.data.image_size))),
                    Item("text", torch.tensor([text.eoi("image"), text.special("<eos>")]))])
    return out


def train(cfg: DictConfig, resume: bool = False) -> Path:
    info = init_distributed(cfg.train.device)
    run_dir = prepare_run_dir(cfg) if info.is_main else Path(cfg.run_dir)
    c = to_object(cfg)
    seed_everything(c.train.seed, 0, c.train.deterministic)  # same initial weights on every rank
    model = build_model(c)
    data = build_dataset(c, model)
    max_len = c.data.max_len

    def collate(model, examples, seeds):
        return model.collate(examples, max_len=max_len, pack=True, seeds=seeds)

    trainer = Trainer(model, data, collate, c.train, run_dir, to_yaml(cfg), info)
    records = trainer.fit(resume=resume)
    if info.is_main and records:
        log.info("step %d: loss %.4f", records[-1]["step"], records[-1]["loss"])
    shutdown(info)
    return run_dir


def load_run(run_dir: Path) -> tuple[ToyConfig, FusionModel]:
    cfg = to_object(load_config(ToyConfig, [run_dir / "config.yaml"]))
    model = build_model(cfg)
    load_trained(model, run_dir)
    return cfg, model.eval()


def sample(run_dir: Path, argv: list[str]) -> Path:
    p = argparse.ArgumentParser(prog="fusion sample RUN_DIR", description="draw one image per caption")
    p.add_argument("--steps", type=int, default=25, help="DPM-Solver steps")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cfg, model = load_run(run_dir)
    text, image = model.adapters["text"], model.adapters["image"]
    prompts = [[Item("text", text.encode(c, bos=True, append=["<boi:image>"]))] for c in CAPTIONS]
    cache, _ = model.prefill(prompts, max_len=64)
    s = cfg.data.image_size
    sampler = make_sampler("dpm_solver", model.diffusion["image"], a.steps, clip_x0=1.0)
    imgs = model.sample_span(cache, "image", (1, s, s), sampler, generator=torch.Generator().manual_seed(a.seed))
    lines = []
    for cap, x in zip(CAPTIONS, imgs):
        lines.append(f'"{cap}":')
        lines += ["".join("#" if v > 0.5 else "." for v in row.tolist()) for row in image.decode(x)[0]]
    out = run_dir / "samples.txt"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


recipe = Recipe(
    name="toy",
    description="tiny text + image model on generated captioned bars (a CPU minute; engine smoke test)",
    config=ToyConfig,
    presets_dir=Path(__file__).parent / "presets" / "toy",
    train=train,
    sample=sample,
)
