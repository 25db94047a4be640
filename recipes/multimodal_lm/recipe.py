"""Recipe "multimodal_lm": Transfusion (Zhou et al. 2024) end to end at small scale.

    fusion run multimodal_lm --preset quick                    # digits + prose, CPU minutes
    fusion sample RUN_DIR --prompt "a handwritten seven"       # text; an image when <boi> comes
    fusion sample RUN_DIR --prompt "the digit 3" --image-first  # force an image
    fusion sample RUN_DIR --image digit.png                    # caption an image
    fusion evaluate RUN_DIR                                    # bpb, captions, text→image, FID

One transformer over text bytes and image patches; ``L = L_LM + 5 L_DDPM`` (eps-prediction,
cosine schedule, T = 1000, one t per image); causal attention with bidirectional attention inside
each image; 80% caption-first / 20% image-first pairs with the image's noise capped at t <= 500;
caption dropout 10% for classifier-free guidance; linear patches or U-Net down/up blocks.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from fusion_core.checkpoint import load_trained
from fusion_core.config import load_config, to_object, to_yaml
from fusion_core.diffusion import GaussianDiffusion, make_sampler
from fusion_core.distributed import init_distributed, shutdown
from fusion_core.model import FusionModel, Item
from fusion_core.stats import frechet_distance
from fusion_core.recipe import (Recipe, machine_description, prepare_run_dir, read_train_time,
                                setup_logging, write_train_time)
from fusion_core.trainer import OptimArgs, Trainer, TrainArgs, seed_everything
from fusion_core.transformer import TransformerArgs
from fusion_core.modalities.image import ImageAdapter
from fusion_core.modalities.text import TextAdapter

from . import data as D
from .generate import caption_images, generate, text_to_image

log = logging.getLogger("fusion_core")


@dataclass
class MMDataArgs:
    source: str = "digits"  # digits (built in) | file.jsonl | hf:NAME
    examples: int = 20000  # examples per epoch of built-in data
    text_fraction: float = 0.3  # share of prose-only examples
    image_first: float = 0.2  # share of image-caption pairs in captioning order
    noise_limit: int = 500  # t cap for image-first images (Transfusion sec. 4.4); 0 = off
    text_only: bool = False  # the text-only baseline (same model, prose only)
    max_len: int = 256  # packed row length
    prose_chunk: int = 160
    image_size: int = 8  # images are image_size x image_size (digits: 8)
    channels: int = 1  # 1 = grayscale, 3 = RGB
    held_out: float = 0.05  # your data: share of examples kept out of training for `fusion evaluate`


@dataclass
class MMModelArgs:
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    qk_norm: bool = True
    dropout: float = 0.0
    patch_size: int = 2
    image_design: str = "linear"  # linear | unet
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    image_attention: str = "bidirectional"  # bidirectional | causal (Table 5 ablation)
    schedule: str = "cosine"
    T: int = 1000
    prediction: str = "eps"
    diffusion_weight: float = 5.0  # lambda
    cond_dropout: float = 0.1


@dataclass
class MMSampleArgs:
    sampler: str = "ddpm"  # ddpm (the paper: 250 steps) | ddim | dpm_solver
    steps: int = 250
    guidance: float = 3.0
    max_new_tokens: int = 48
    temperature: float = 0.0


@dataclass
class MMEvalArgs:
    sampler: str = "dpm_solver"
    steps: int = 25
    guidance: float = 3.0
    per_digit: int = 20  # text→image samples per digit
    captions: int = 297  # held-out digits to caption (all by default)
    after_train: bool = True


@dataclass
class MMConfig:
    recipe: str = "multimodal_lm"
    run_dir: str = ""
    data: MMDataArgs = field(default_factory=MMDataArgs)
    model: MMModelArgs = field(default_factory=MMModelArgs)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(
        steps=3000, batch_size=32, ckpt_every=1000, log_every=50, ema_decay=0.0,
        optim=OptimArgs(lr=3e-4, min_lr=1.5e-5, warmup=4000, weight_decay=0.1)))
    sample: MMSampleArgs = field(default_factory=MMSampleArgs)
    eval: MMEvalArgs = field(default_factory=MMEvalArgs)


# -- model and data --------------------------------------------------------------------------------

def build_model(c: MMConfig) -> FusionModel:
    m = c.model
    text = TextAdapter(m.dim)
    image = ImageAdapter(m.dim, channels=c.data.channels, patch_size=m.patch_size, design=m.image_design,
                         unet_channels=m.unet_channels, attention=m.image_attention)
    args = TransformerArgs(dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads, qk_norm=m.qk_norm,
                           dropout=m.dropout)
    return FusionModel(args, [text, image], diffusion=GaussianDiffusion(m.schedule, m.T, m.prediction),
                       diffusion_weight=m.diffusion_weight, cond_dropout=m.cond_dropout)


def encode_pair(model: FusionModel, caption: str, img: torch.Tensor, image_first: bool,
                noise_limit: int) -> list[Item]:
    """Transfusion's layout of one image–caption pair (see :mod:`.data`)."""
    text, image = model.adapters["text"], model.adapters["image"]
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    x = image.encode(img)
    eoi = torch.tensor([text.eoi("image")])
    if image_first:
        return [Item("text", text.encode("", bos=True, append=["<boi:image>"])),
                Item("image", x, max_t=noise_limit or None),
                Item("text", torch.cat([eoi, text.encode(caption, eos=True)]))]
    return [Item("text", text.encode(caption, bos=True, append=["<boi:image>"])), Item("image", x),
            Item("text", torch.cat([eoi, torch.tensor([text.special("<eos>")])]))]


def encode_prose(model: FusionModel, chunk: str) -> list[Item]:
    return [Item("text", model.adapters["text"].encode(chunk, bos=True, eos=True))]


def encode_example(model: FusionModel, ex: list, rng: random.Random, c: MMDataArgs) -> list[Item]:
    """A user example (list of str / image tensors) → Items, in its own order."""
    text = model.adapters["text"]
    items: list[Item] = []
    for j, seg in enumerate(ex):
        if isinstance(seg, str):
            ids = text.encode(seg, bos=(j == 0), eos=(j == len(ex) - 1))
            if j + 1 < len(ex) and not isinstance(ex[j + 1], str):
                ids = torch.cat([ids, torch.tensor([text.boi("image")])])
            if j > 0 and not isinstance(ex[j - 1], str):
                ids = torch.cat([torch.tensor([text.eoi("image")]), ids])
            items.append(Item("text", ids))
        else:
            if j == 0:
                items.append(Item("text", text.encode("", bos=True, append=["<boi:image>"])))
            first = j == 0 or (j == 1 and not isinstance(ex[0], str))
            items.append(Item("image", model.adapters["image"].encode(seg),
                              max_t=(c.noise_limit or None) if first else None))
            if j == len(ex) - 1:
                items.append(Item("text", torch.tensor([text.eoi("image"), text.special("<eos>")])))
    return items


def user_examples(c: MMConfig) -> tuple[list[list], list[list]]:
    """Your examples (JSONL or HF), checked, split into training and held-out ones (a seeded
    choice of ``data.held_out`` of them, which training never sees)."""
    d = c.data
    if not 0 <= d.held_out < 1:
        raise ValueError(f"data.held_out must be in [0, 1), got {d.held_out}")
    if d.source.startswith("hf:"):
        import datasets

        raw = D.from_hf(datasets.load_dataset(d.source[3:], split="train"), d.channels)
    else:
        raw = D.load_jsonl(d.source, d.channels)
    for i, ex in enumerate(raw):
        D.check_example(ex, i, d.channels, d.image_size)
    held = set(random.Random(c.train.seed).sample(range(len(raw)), round(len(raw) * d.held_out)))
    return [ex for i, ex in enumerate(raw) if i not in held], [ex for i, ex in enumerate(raw) if i in held]


def build_dataset(c: MMConfig, model: FusionModel) -> list[list[Item]]:
    d = c.data
    rng = random.Random(c.train.seed)
    if d.source != "digits":
        train, _ = user_examples(c)
        if not train:
            raise ValueError(f"{d.source}: no training examples")
        return [encode_example(model, ex, rng, d) for ex in train]
    digits, _ = D.load_digits()
    prose, _ = D.load_prose(chunk=min(d.prose_chunk, d.max_len - 2))
    out = []
    for _ in range(d.examples):
        if d.text_only or rng.random() < d.text_fraction:
            out.append(encode_prose(model, rng.choice(prose)))
        else:
            i = rng.randrange(len(digits.labels))
            out.append(encode_pair(model, D.caption(int(digits.labels[i]), rng), digits.images[i],
                                   rng.random() < d.image_first, d.noise_limit))
    return out


def train(cfg: DictConfig, resume: bool = False) -> Path:
    info = init_distributed(cfg.train.device)
    run_dir = prepare_run_dir(cfg) if info.is_main else Path(cfg.run_dir)
    c = to_object(cfg)
    seed_everything(c.train.seed, 0, c.train.deterministic)
    model = build_model(c)
    data = build_dataset(c, model)
    if info.is_main:
        log.info("%d examples; model %.2fM parameters", len(data), sum(p.numel() for p in model.parameters()) / 1e6)
    max_len = c.data.max_len

    def collate(model, examples, seeds):
        return model.collate(examples, max_len=max_len, pack=True, seeds=seeds)

    trainer = Trainer(model, data, collate, c.train, run_dir, to_yaml(cfg), info)
    trainer.fit(resume=resume)
    shutdown(info)
    if info.is_main:
        write_train_time(run_dir, trainer.train_seconds)
        if c.eval.after_train:
            evaluate(run_dir, [])
    return run_dir


def load_run(run_dir: Path) -> tuple[MMConfig, FusionModel]:
    c = to_object(load_config(MMConfig, [Path(run_dir) / "config.yaml"]))
    model = build_model(c)
    load_trained(model, run_dir)
    return c, model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


# -- sample ------------------------------------------------------------------------------------------

def sample(run_dir: Path, argv: list[str]) -> list:
    p = argparse.ArgumentParser(prog="fusion sample RUN_DIR", description="generate text, images and captions")
    p.add_argument("--prompt", action="append", default=[], help="a text prompt (repeat for a batch)")
    p.add_argument("--image", action="append", default=[], help="an image file to caption (repeat for a batch)")
    p.add_argument("--image-first", action="store_true", help="force an image right after the prompt")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpm_solver"])
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float, help="CFG scale for forced images (0 = off)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    c, model = load_run(run_dir)
    s = c.sample
    sampler = make_sampler(a.sampler or s.sampler, model.diffusion["image"], a.steps or s.steps, clip_x0=1.0)
    text = model.adapters["text"]
    shape = (c.data.channels, c.data.image_size, c.data.image_size)
    out_dir = Path(run_dir) / "samples"
    out_dir.mkdir(exist_ok=True)
    max_len = max(c.data.max_len, 64) * 2
    results = []
    if a.image:
        imgs = torch.stack([D.read_image(Path(f), channels=shape[0]) for f in a.image])
        if imgs.shape[2:] != shape[1:]:
            imgs = F.interpolate(imgs, size=shape[1:], mode="area")
        caps = caption_images(model, imgs, max_len=max_len, prompt=a.prompt[0] if a.prompt else "")
        for f, cap in zip(a.image, caps):
            print(f"{f}: {cap}")
            results.append(cap)
    elif a.prompt:
        for pr in a.prompt:
            if len(text.encode(pr)) >= max_len - 80:
                raise ValueError(f"prompt of {len(text.encode(pr))} tokens exceeds the maximum {max_len - 80}")
        guidance = s.guidance if a.guidance is None else a.guidance
        if a.image_first and guidance:
            imgs = text_to_image(model, a.prompt, sampler, shape, guidance, a.seed, max_len)
            gens = [[im] for im in imgs]
        else:
            prompts = [[Item("text", text.encode(pr, bos=True))] for pr in a.prompt]
            gens = [g.segments for g in generate(model, prompts, sampler, shape, a.max_new_tokens or s.max_new_tokens,
                                                 max_len, a.temperature if a.temperature is not None else s.temperature,
                                                 force_image=a.image_first, seed=a.seed)]
        k = 0
        for pr, segs in zip(a.prompt, gens):
            shown = []
            for seg in segs:
                if isinstance(seg, str):
                    shown.append(seg)
                else:
                    path = out_dir / f"image_{k:03d}.png"
                    save_grid(seg[None], path, cols=1)
                    shown.append(f"[image: {path}]")
                    k += 1
            print(f"{pr!r} → {' '.join(shown)}")
            results.append(segs)
    else:
        p.error("give --prompt (text and images) or --image (captioning)")
    return results


# -- evaluate ----------------------------------------------------------------------------------------

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
    p = argparse.ArgumentParser(prog="fusion evaluate RUN_DIR", description="bpb, captions, text→image, digits-FID")
    p.add_argument("--per-digit", type=int)
    p.add_argument("--captions", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run_dir = Path(run_dir)
    setup_logging(run_dir / "train.log")
    c, model = load_run(run_dir)
    e = c.eval
    for k in ("per_digit", "captions", "steps", "guidance"):
        if getattr(a, k) is not None:
            setattr(e, k, getattr(a, k))
    t0 = time.time()
    if c.data.source != "digits":
        res = evaluate_user_data(c, model, run_dir, a.seed)
        res["eval_seconds"] = time.time() - t0
        (run_dir / "eval.json").write_text(json.dumps(res, indent=1))
        write_report(run_dir, c, res)
        for k in ("heldout_examples", "heldout_text_bits_per_token", "heldout_image_mse"):
            if k in res:
                log.info("%-28s %.4f", k, res[k])
        return res
    train_d, test_d = D.load_digits()
    _, prose_test = D.load_prose(chunk=min(c.data.prose_chunk, c.data.max_len - 2))
    res: dict = {"machine": machine_description()}
    res["bpb"] = bits_per_byte(model, prose_test)
    clf = train_classifier(train_d)
    with torch.no_grad():
        res["classifier_accuracy"] = float((clf(test_d.images).argmax(1) == test_d.labels).float().mean())
    if not c.data.text_only:
        n = min(e.captions, len(test_d.labels))
        caps = caption_images(model, test_d.images[:n], max_len=2 * c.data.max_len)
        named = [D.parse_digit(cap) for cap in caps]
        res["caption_accuracy"] = float(np.mean([x == int(y) for x, y in zip(named, test_d.labels[:n])]))
        res["caption_examples"] = [(int(y), cap) for y, cap in zip(test_d.labels[:8], caps[:8])]
        sampler = make_sampler(e.sampler, model.diffusion["image"], e.steps, clip_x0=1.0)
        rng = random.Random(a.seed)
        labels = [d for d in range(10) for _ in range(e.per_digit)]
        prompts = [D.caption(d, rng) for d in labels]
        imgs = torch.cat([text_to_image(model, prompts[i : i + 100], sampler, (1, 8, 8), e.guidance or None,
                                        seed=a.seed + i, max_len=2 * c.data.max_len)
                          for i in range(0, len(prompts), 100)])
        with torch.no_grad():
            pred = clf(imgs).argmax(1)
            res["t2i_accuracy"] = float((pred == torch.tensor(labels)).float().mean())
            res["digits_fid"] = frechet_distance(clf.body(test_d.images).double().numpy(),
                                                 clf.body(imgs).double().numpy())
        save_grid(imgs.view(10, e.per_digit, 1, 8, 8)[:, :10].reshape(-1, 1, 8, 8), run_dir / "t2i_grid.png", cols=10)
    res["eval_seconds"] = time.time() - t0
    (run_dir / "eval.json").write_text(json.dumps(res, indent=1))
    write_report(run_dir, c, res)
    for k in ("bpb", "caption_accuracy", "t2i_accuracy", "digits_fid", "classifier_accuracy"):
        if k in res:
            log.info("%-20s %.4f", k, res[k])
    return res


@torch.no_grad()
def evaluate_user_data(c: MMConfig, model: FusionModel, run_dir: Path, seed: int = 0) -> dict:
    """Held-out loss per modality on your held-out examples (seeded noise, so runs compare), and
    images generated from the captions of held-out caption → image examples next to the real ones."""
    _, held = user_examples(c)
    res: dict = {"machine": machine_description(), "heldout_examples": len(held)}
    if not held:
        log.warning("no held-out examples (data.held_out=%s): nothing to evaluate", c.data.held_out)
        return res
    rng = random.Random(seed)
    losses = mean_losses(model, [encode_example(model, ex, rng, c.data) for ex in held])
    if "text" in losses:
        res["heldout_text_bits_per_token"] = losses["text"] / math.log(2)
    if "image" in losses:
        res["heldout_image_mse"] = losses["image"]
    pairs = [(ex[0], ex[1]) for ex in held if len(ex) > 1 and isinstance(ex[0], str) and not isinstance(ex[1], str)]
    pairs = pairs[:20]  # two rows of ten: real above, generated below
    if pairs:
        e = c.eval
        sampler = make_sampler(e.sampler, model.diffusion["image"], e.steps, clip_x0=1.0)
        S, C = c.data.image_size, c.data.channels
        fake = text_to_image(model, [p[0] for p in pairs], sampler, (C, S, S), e.guidance or None, seed=seed,
                             max_len=2 * c.data.max_len)
        real = torch.stack([p[1] for p in pairs])
        cols = min(10, len(pairs))
        rows = [torch.cat([real[i : i + cols], fake[i : i + cols]]) for i in range(0, len(pairs), cols)]
        save_grid(torch.cat(rows), run_dir / "heldout_grid.png", cols=cols)
        res["heldout_captions"] = [p[0] for p in pairs[:cols]]
    return res


def save_grid(imgs: torch.Tensor, path: Path, cols: int = 10) -> Path:
    """Save ``(n, C, H, W)`` images in [0, 1] (C = 1 or 3) as one PNG grid (upscaled 4x)."""
    from PIL import Image

    n, C, H, W = imgs.shape
    rows = -(-n // cols)
    grid = torch.ones(C, rows * (H + 1), cols * (W + 1))
    for i in range(n):
        r, k = divmod(i, cols)
        grid[:, r * (H + 1) : r * (H + 1) + H, k * (W + 1) : k * (W + 1) + W] = imgs[i]
    arr = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if C == 1 else arr)
    img.resize((arr.shape[1] * 4, arr.shape[0] * 4), Image.NEAREST).save(path)
    return Path(path)


def write_report(run_dir: Path, c: MMConfig, res: dict) -> Path:
    secs, _ = read_train_time(run_dir)
    m = c.model
    lines = [f"# Transfusion run `{run_dir.name}`", "",
             f"Model {m.dim} wide, {m.n_layers} layers, {m.image_design} {m.patch_size}x{m.patch_size} patches, "
             f"{m.image_attention} attention in images; {c.train.steps} steps of {c.train.batch_size} examples "
             f"(rows of {c.data.max_len}); {'text only' if c.data.text_only else 'digits + prose' if c.data.source == 'digits' else c.data.source}.", "",
             f"Machine: {res['machine']}. Training {secs:.0f} s, evaluation {res['eval_seconds']:.0f} s.", "",
             "| metric | value |", "| --- | --- |"]
    if "bpb" in res:
        lines.append(f"| held-out prose, bits per byte | {res['bpb']:.4f} |")
    if "heldout_examples" in res:
        lines.append(f"| held-out examples (never trained on) | {res['heldout_examples']} |")
        if "heldout_text_bits_per_token" in res:
            lines.append(f"| held-out text, bits per token | {res['heldout_text_bits_per_token']:.4f} |")
        if "heldout_image_mse" in res:
            lines.append(f"| held-out image diffusion loss (MSE) | {res['heldout_image_mse']:.4f} |")
        if "heldout_captions" in res:
            lines += ["", "Held-out examples: real images (top of each pair of rows) and images generated from "
                      "their captions (below): " + "; ".join(repr(t) for t in res["heldout_captions"]), "",
                      "![held-out](heldout_grid.png)", ""]
    if "caption_accuracy" in res:
        lines += [f"| caption accuracy (names the right digit) | {res['caption_accuracy']:.3f} |",
                  f"| text→image accuracy (classifier) | {res['t2i_accuracy']:.3f} |",
                  f"| digits-FID (classifier features) | {res['digits_fid']:.2f} |",
                  f"| classifier accuracy on real held-out digits | {res['classifier_accuracy']:.3f} |",
                  "", "Captions of held-out digits:", ""]
        lines += [f"- {y}: {cap!r}" for y, cap in res["caption_examples"]]
        lines += ["", "Text→image (rows: digits 0–9):", "", "![t2i](t2i_grid.png)", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out


recipe = Recipe(
    name="multimodal_lm",
    description="Transfusion: one transformer over text + images (digits and prose built in)",
    config=MMConfig,
    presets_dir=Path(__file__).resolve().parent.parent / "presets" / "multimodal_lm",
    train=train,
    sample=sample,
    evaluate=evaluate,
)
