"""The multimodal_lm recipe's model and training examples: one transformer over text bytes and
image patches, examples laid out as Transfusion does (:func:`fusion_core.generation.interleave`).

Layout per example (Transfusion sec. 3): caption first: ``<bos> caption <boi>``, image,
``<eoi> <eos>``; image first (captioning): ``<bos> <boi>``, image (noise limited to t <= 500),
``<eoi> caption <eos>``; prose: ``<bos> text <eos>``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from fusion_core.engine.data import ExampleStream, load_hf
from fusion_core.diffusion import GaussianDiffusion
from fusion_core.generation import interleave
from fusion_core.model import FusionModel, Item
from fusion_core.modalities.image import ImageAdapter
from fusion_core.modalities.text import TextAdapter
from fusion_core.engine.recipe import TrainJob
from fusion_core.transformer import backbone_args

from . import data as D
from .config import MMConfig, MMDataArgs

HELD_OUT_DIR = "heldout"  # your data's held-out examples, kept in the run folder for evaluation
HELD_OUT_MAX = 200  # held-out examples kept from a stream


def build_model(c: MMConfig) -> FusionModel:
    m = c.model
    text = TextAdapter(m.dim, markers=("image",))
    image = ImageAdapter(m.dim, channels=c.data.channels, patch_size=m.patch_size, design=m.image_design,
                         unet_channels=m.unet_channels, attention=m.image_attention)
    diffusion = GaussianDiffusion.from_args(m)
    return FusionModel(backbone_args(m), [text, image], diffusion=diffusion,
                       diffusion_weight=m.diffusion_weight, cond_dropout=m.cond_dropout)


def encode_example(model: FusionModel, ex: list, d: MMDataArgs) -> list[Item]:
    """A user example (str and ``(C, H, W)`` image segments, in its own order) → Items. Images
    that come before any text are in captioning order: their noise is capped (``data.noise_limit``)."""
    items = interleave(model, [s if isinstance(s, str) else ("image", s) for s in ex])
    first_text = next((j for j, s in enumerate(ex) if isinstance(s, str)), len(ex))
    limited = iter([j < first_text for j, s in enumerate(ex) if not isinstance(s, str)])
    return [Item(it.modality, it.payload, max_t=(d.noise_limit or None) if next(limited) else None)
            if it.modality == "image" else it for it in items]


def encode_pair(model: FusionModel, caption: str, img: torch.Tensor, image_first: bool,
                noise_limit: int) -> list[Item]:
    """One image–caption pair, caption first or image first (noise-limited)."""
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    segments = [("image", img), caption] if image_first else [caption, ("image", img)]
    items = interleave(model, segments)
    if image_first and noise_limit:
        items[1] = Item("image", items[1].payload, max_t=noise_limit)
    return items


def encode_prose(model: FusionModel, chunk: str) -> list[Item]:
    return interleave(model, [chunk])


def user_examples(c: MMConfig, data=None) -> tuple[list[list], list[list]]:
    """Your examples — ``data`` from Python (a list of examples or a ``datasets.Dataset``), else
    ``data.source`` (JSONL or ``hf:``) — checked, split into training and held-out ones (a seeded
    choice of ``data.held_out`` of them, which training never sees)."""
    d = c.data
    if data is not None and not isinstance(data, (str, Path)):
        if hasattr(data, "column_names"):
            raw = D.from_hf(data, d.channels, d.image_size, "the Dataset")
        else:
            raw = [D.coerce_example(ex, f"example {i} (counting from 0)") for i, ex in enumerate(data)]
            for i, ex in enumerate(raw):
                D.check_example(ex, f"example {i} (counting from 0)", d.channels, d.image_size)
    else:
        source = str(data if data is not None else d.source)
        raw = (D.from_hf(load_hf(source[3:]), d.channels, d.image_size, source) if source.startswith("hf:")
               else D.load_jsonl(source, d.channels, d.image_size))
    held = set(random.Random(c.train.seed).sample(range(len(raw)), round(len(raw) * d.held_out)))
    return [ex for i, ex in enumerate(raw) if i not in held], [ex for i, ex in enumerate(raw) if i in held]


def builtin_examples(c: MMConfig, model: FusionModel) -> list[list[Item]]:
    """Digits + prose: ``data.examples`` examples, drawn with the run's seed."""
    d = c.data
    rng = random.Random(c.train.seed)
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


def streamed_examples(c: MMConfig, model: FusionModel, data=None) -> tuple[ExampleStream, list[list]]:
    """Your data as a stream read during training (``data.streaming``): JSONL shards (a glob) or
    an HF dataset, every k-th record held out (k = 1 / ``data.held_out``); returns the training
    stream and up to :data:`HELD_OUT_MAX` held-out examples for evaluation."""
    d = c.data
    if data is not None and not isinstance(data, (str, Path)):
        stream = ExampleStream.hf(data)
    elif str(data or d.source).startswith("hf:"):
        stream = ExampleStream.hf(load_hf(str(data or d.source)[3:], streaming=True))
    else:
        stream = ExampleStream.jsonl(str(data or d.source))
    cols = None

    def parse(rec):
        nonlocal cols
        if "_where" in rec:
            return D.parse_record(rec, rec["_folder"], rec["_where"], d.channels, d.image_size)
        cols = cols or set(rec)
        return D.row_to_example(rec, cols, d.channels, d.image_size, f"{stream.name} record")

    stream.encode = lambda rec: encode_example(model, parse(rec), d)
    if not d.held_out:
        return stream, []
    train, held = stream.split(max(2, round(1 / d.held_out)))
    kept = []
    for rec in held.records():
        kept.append(parse(rec))
        if len(kept) == HELD_OUT_MAX:
            break
    return train, kept


def setup(c: MMConfig, run_dir: Path, data=None) -> TrainJob:
    model = build_model(c)
    save = None
    if data is None and c.data.source == "digits":
        examples = builtin_examples(c, model)
    elif c.data.streaming:
        examples, held = streamed_examples(c, model, data)

        def save(run_dir: Path) -> None:
            save_examples(held, Path(run_dir) / HELD_OUT_DIR)
    else:
        train, held = user_examples(c, data)
        if not train:
            raise ValueError(f"{c.data.source}: no training examples")
        examples = [encode_example(model, ex, c.data) for ex in train]

        def save(run_dir: Path) -> None:
            save_examples(held, Path(run_dir) / HELD_OUT_DIR)

    max_len = c.data.max_len

    def collate(model, batch, seeds):
        return model.collate(batch, max_len=max_len, pack=True, seeds=seeds)

    summary = f"streaming {examples.name}" if isinstance(examples, ExampleStream) else f"{len(examples)} examples"
    return TrainJob(model, examples, collate, summary, save)


def save_examples(examples: list[list], folder: Path) -> Path:
    """Examples as ``folder/examples.jsonl`` + PNG images (what :func:`data.load_jsonl` reads)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ex in enumerate(examples):
        segs = []
        for j, seg in enumerate(ex):
            if isinstance(seg, str):
                segs.append({"text": seg})
                continue
            arr = (seg.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            name = f"{i:05d}_{j}.png"
            Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(folder / name)
            segs.append({"image": name})
        lines.append(json.dumps({"segments": segs}))
    path = folder / "examples.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path
