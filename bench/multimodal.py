"""Multimodal speed: (1) training tokens/s of our FusionModel vs the reference open implementation
transfusion-pytorch (the `bench` extra) at equal width/depth/heads and equal sequences; (2) the
time of one diffusion step against a KV-cached 1024-token prompt vs a 16-token prompt (the prefix
is computed once, so the step should barely notice it). Prints tables and one JSON line.

    python bench/multimodal.py [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import print_json, print_table, sync, timeit
from fusion_core import TransformerArgs
from fusion_core.model import FusionModel, Item
from fusion_core.modalities.image import ImageAdapter
from fusion_core.modalities.text import TextAdapter


def ours_model(dim, depth, heads, device):
    text = TextAdapter(dim)
    image = ImageAdapter(dim, channels=1, patch_size=2)
    return FusionModel(TransformerArgs(dim=dim, n_layers=depth, n_heads=heads), [text, image]).to(device)


def train_throughput(device, dim, depth, heads, batch, text_len, n_images, side, steps):
    g = torch.Generator().manual_seed(0)
    patches = (side // 2) ** 2
    rows = []
    examples = []
    for _ in range(batch):
        ex = []
        for _ in range(n_images):
            ex.append(torch.randint(0, 256, (text_len,), generator=g))
            ex.append(torch.rand(1, side, side, generator=g))
        examples.append(ex)
    tokens = batch * n_images * (text_len + patches)

    # ours
    torch.manual_seed(0)
    model = ours_model(dim, depth, heads, device)
    image = model.adapters["image"]
    items = [[Item("text", x) if x.dtype == torch.long else Item("image", image.encode(x)) for x in ex]
             for ex in examples]
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def ours_step():
        batch_ = model.collate(items)  # layout built every step, as in training
        loss = model.loss(batch_).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ours_ms = timeit(ours_step, device, warmup=1, iters=steps)
    rows.append({"impl": "fusion-core", "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                 "tokens/step": tokens, "step_ms": ours_ms, "tokens/s": tokens / ours_ms * 1e3})
    try:
        from transfusion_pytorch import Transfusion
    except ImportError:
        rows.append({"impl": "transfusion-pytorch (not installed: pip install transfusion-pytorch)",
                     "params_M": float("nan"), "tokens/step": tokens, "step_ms": float("nan"), "tokens/s": float("nan")})
        return rows
    torch.manual_seed(0)
    ref = Transfusion(num_text_tokens=256, dim_latent=4, modality_default_shape=(patches,),
                      transformer=dict(dim=dim, depth=depth, heads=heads, dim_head=dim // heads)).to(device)
    data = [[x.to(device) if x.dtype == torch.long else
             x.reshape(1, side // 2, 2, side // 2, 2).permute(1, 3, 0, 2, 4).reshape(patches, 4).to(device)
             for x in ex] for ex in examples]
    ropt = torch.optim.Adam(ref.parameters(), lr=1e-4)

    def ref_step():
        loss = ref(data)
        ropt.zero_grad(set_to_none=True)
        loss.backward()
        ropt.step()

    ref_ms = timeit(ref_step, device, warmup=1, iters=steps)
    rows.append({"impl": "transfusion-pytorch", "params_M": sum(p.numel() for p in ref.parameters()) / 1e6,
                 "tokens/step": tokens, "step_ms": ref_ms, "tokens/s": tokens / ref_ms * 1e3})
    return rows


@torch.no_grad()
def cached_step(device, dim, depth, heads, side, prompts=(16, 1024), repeats=8):
    """Median time of one denoising step (a 256-patch image) against each cached prompt; the
    prompt lengths are interleaved so machine noise hits both alike."""
    torch.manual_seed(0)
    model = ours_model(dim, depth, heads, device).eval()
    text = model.adapters["text"]
    caches = {}
    for n in prompts:
        ids = torch.cat([torch.randint(0, 256, (n - 1,)), torch.tensor([text.boi("image")])])
        caches[n], _ = model.prefill([[Item("text", ids)]], max_len=n + (side // 2) ** 2 + 8)
    x = torch.randn(1, 1, side, side, device=device)
    t = torch.tensor([500], device=device)
    times = {n: [] for n in prompts}
    for rep in range(repeats + 1):
        for n in prompts:
            sync(device)
            t0 = time.perf_counter()
            model.denoise_step(x, t, caches[n], "image")
            sync(device)
            if rep:  # the first round warms up
                times[n].append((time.perf_counter() - t0) * 1e3)
    rows = [{"dim": dim, "prompt_tokens": n, "image_patches": (side // 2) ** 2,
             "step_ms": sorted(v)[len(v) // 2]} for n, v in times.items()]
    for r in rows:
        r["vs_16"] = r["step_ms"] / rows[0]["step_ms"]
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    train = train_throughput(device, a.dim, a.depth, a.heads, batch=16 if cuda else 4, text_len=64,
                             n_images=2, side=8, steps=10 if cuda else 3)
    ratio = train[0]["tokens/s"] / train[1]["tokens/s"] if len(train) > 1 else float("nan")
    print_table(train, f"training throughput, dim {a.dim} x depth {a.depth}, {device}")
    print(f"ours / transfusion-pytorch tokens/s: {ratio:.2f}x")
    # the prefix's cost relative to the image's own is a matter of width: measure at ours and at
    # the 0.16B preset's (768 wide; the ratio does not depend on depth)
    steps = cached_step(device, a.dim, a.depth, a.heads, side=32) + cached_step(device, 768, 2, 12, side=32)
    print_table(steps, "one diffusion step of a 256-patch image against a KV-cached prompt")
    print_json("multimodal", train + steps, device=str(device), train_ratio=ratio)


if __name__ == "__main__":
    main()
