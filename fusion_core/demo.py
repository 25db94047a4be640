"""A one-minute CPU demo of the backbone: a tiny text + image FusionModel learns toy captioned
images (bars: "horizontal" / "vertical"), printing the loss as it falls, then draws one image
for each caption by denoising against the cached caption.

    python -m fusion_core.demo [--steps 300] [--no-progress]

The recipes (``fusion run timeseries``, ``fusion run multimodal_lm``) are the real jobs.
"""

from __future__ import annotations

import argparse
import random

import torch
from tqdm.auto import tqdm

from fusion_core import TransformerArgs
from fusion_core.diffusion import make_sampler
from fusion_core.model import FusionModel, Item

CAPTIONS = ("horizontal", "vertical")


def bars(kind: str, rng: random.Random, size: int = 8) -> torch.Tensor:
    """A (1, size, size) image in [0, 1] with one bright bar at a random row or column."""
    img = torch.zeros(1, size, size)
    k = rng.randrange(1, size - 1)
    if kind == "horizontal":
        img[0, k] = 1.0
    else:
        img[0, :, k] = 1.0
    return img


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    from fusion_core.modalities.image import ImageAdapter
    from fusion_core.modalities.text import TextAdapter

    D = 64
    text = TextAdapter(D)
    image = ImageAdapter(D, channels=1, patch_size=2)
    model = FusionModel(TransformerArgs(dim=D, n_layers=3, n_heads=4), [text, image])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.0)

    def example():
        cap = rng.choice(CAPTIONS)
        return [Item("text", text.encode(cap, bos=True, append=["<boi:image>"])),
                Item("image", image.encode(bars(cap, rng))),
                Item("text", torch.tensor([text.eoi("image"), text.special("<eos>")]))]

    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters")
    losses = []
    bar = tqdm(range(a.steps), disable=a.no_progress, desc="train")
    for step in bar:
        batch = model.collate([example() for _ in range(16)], max_len=128, pack=True)
        out = model.loss(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        if step % 50 == 0 or step == a.steps - 1:
            parts = ", ".join(f"{k} {v.item():.3f}" for k, v in out.parts.items())
            tqdm.write(f"step {step:4d}  loss {out.loss.item():.3f}  ({parts})")
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"loss fell from {first:.3f} to {last:.3f} ({100 * (1 - last / first):.0f}% lower)")

    model.eval()
    prompts = [[Item("text", text.encode(c, bos=True, append=["<boi:image>"]))] for c in CAPTIONS]
    cache, _ = model.prefill(prompts, max_len=64)
    imgs = model.sample_span(cache, "image", (1, 8, 8), make_sampler("dpm_solver", model.diffusion["image"], 20, clip_x0=1.0),
                             generator=torch.Generator().manual_seed(a.seed))
    for cap, x in zip(CAPTIONS, imgs):
        print(f'\n"{cap}":')
        for row in image.decode(x)[0]:
            print("".join("#" if v > 0.5 else "." for v in row.tolist()))
    return first, last


if __name__ == "__main__":
    main()
