"""``fusion sample RUN_DIR``: text, images and captions from a trained multimodal_lm run.

    fusion sample RUN --prompt "a handwritten seven"                 # text; an image when <boi> comes
    fusion sample RUN --prompt "the digit 3" --image-first           # force an image (CFG: sample.guidance)
    fusion sample RUN --image digit.png                              # caption an image
    fusion sample RUN --prompt "a two" sample.temperature=0.8 sample.max_new_tokens=100

Generation itself is :mod:`fusion_core.generation` (``generate``, ``generate_span``,
``caption``); this module reads files and writes PNGs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from fusion_core import generation as gen
from fusion_core.engine.recipe import load_model, parse_command

from . import data as D
from .report import save_grid


def load_run(run_dir: Path, overrides=()):
    """Config (with ``overrides``) and trained model of a run."""
    from . import recipe

    c = recipe.run_config(run_dir, overrides)
    return c, load_model(run_dir, c)


def image_shape(c) -> tuple[int, int, int]:
    return c.data.channels, c.data.image_size, c.data.image_size


def sample(run_dir: Path, argv: list[str]) -> list:
    p = argparse.ArgumentParser(prog="fusion sample RUN_DIR", description="generate text, images and captions "
                                "(config values as key=value, e.g. sample.steps=25 sample.guidance=5)")
    p.add_argument("--prompt", action="append", default=[], help="a text prompt (repeat for a batch)")
    p.add_argument("--image", action="append", default=[], help="an image file to caption (repeat for a batch)")
    p.add_argument("--image-first", action="store_true", help="force an image right after the prompt")
    a, overrides = parse_command(p, argv)
    if not (a.image or a.prompt):
        p.error("give --prompt (text and images) or --image (captioning)")
    c, model = load_run(run_dir, overrides)
    s = c.sample
    shape = image_shape(c)
    out_dir = Path(run_dir) / "samples"
    out_dir.mkdir(exist_ok=True)
    text = model.adapters["text"]
    if a.image:
        imgs = torch.stack([D.read_image(Path(f), channels=shape[0], strict=False) for f in a.image])
        if imgs.shape[2:] != shape[1:]:
            imgs = F.interpolate(imgs, size=shape[1:], mode="area")
        caps = gen.caption(model, "image", imgs, prompt=a.prompt[0] if a.prompt else "",
                           max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k or None,
                           seed=s.seed)
        for f, cap in zip(a.image, caps):
            print(f"{f}: {cap}")
        return caps
    for pr in a.prompt:
        n = len(text.encode(pr)) + 1
        if n > c.data.max_len:
            raise ValueError(f"prompt of {n} tokens exceeds the maximum {c.data.max_len} (data.max_len, "
                             "the longest row the model was trained on)")
    sampler = s.make(model.diffusion["image"])
    if a.image_first and s.guidance:  # text → image, conditional and unconditional in one pass
        imgs = gen.generate_span(model, a.prompt, "image", shape, sampler, s.guidance_args, seed=s.seed)
        gens = [gen.Generated([("image", im)], "eos") for im in imgs]
    else:
        gens = gen.generate(model, a.prompt, sampler, {"image": shape}, guidance=s.guidance_args,
                            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k or None,
                            force="image" if a.image_first else None, seed=s.seed)
    k = 0
    for pr, g in zip(a.prompt, gens):
        shown = []
        for modality, value in g.segments:
            if isinstance(value, str):
                shown.append(value)
            else:
                path = out_dir / f"image_{k:03d}.png"
                save_grid(value[None], path, cols=1)
                shown.append(f"[image: {path}]")
                k += 1
        cut = f" (stopped at {g.stop})" if g.stop not in ("eos", "") else ""
        print(f"{pr!r} → {' '.join(shown)}{cut}")
    return [g.segments for g in gens]
