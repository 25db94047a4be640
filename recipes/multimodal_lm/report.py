"""The multimodal_lm recipe's pictures and ``report.md``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fusion_core.engine.recipe import read_train_time

from .config import MMConfig


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
    trained = read_train_time(run_dir)
    m = c.model
    data = "text only" if c.data.text_only else "digits + prose" if c.data.source == "digits" else c.data.source
    lines = [f"# Transfusion run `{run_dir.name}`", "",
             f"Model {m.dim} wide, {m.n_layers} layers, {m.image_design} {m.patch_size}x{m.patch_size} patches, "
             f"{m.image_attention} attention in images; {c.train.steps} steps of {c.train.batch_size} examples "
             f"(rows of {c.data.max_len}); {data}; seed {c.train.seed}.", "",
             f"Machine: {res['machine']}. Training {trained}, evaluation {res['eval_seconds']:.0f} s.", "",
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
