"""CUDA checks that CPU tests cannot make: flex attention with gradients against SDPA on mixed
layouts, the transformer under ``auto`` (flex) vs ``sdpa`` in bf16, and training throughput of
a Transfusion-sized FusionModel. Prints tables and one JSON line per section.

    python bench/gpu_check.py [--preset transfusion-0.16b] [--seq-len 4096]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import print_json, print_table
from fusion_core import Segment, Transformer, TransformerArgs, build_layout, preset
from fusion_core.attention import attend
from fusion_core.masks import AttentionMask
from fusion_core.model import FusionModel, Item
from fusion_core.modalities.image import ImageAdapter
from fusion_core.modalities.text import TextAdapter

from attention import MODALITIES, transfusion_layout


def flex_vs_sdpa_gradients(device):
    rows = []
    for dtype, tol in [(torch.float32, 2e-3), (torch.bfloat16, 3e-2)]:
        layout, B = transfusion_layout(2, 1024)
        layout = layout.to(device)
        mask = AttentionMask("mixed", layout.document[:2].contiguous(), layout.span[:2].contiguous())
        base = [torch.randn(2, 8, 1024, 64, device=device, dtype=dtype) for _ in range(3)]
        outs, grads = {}, {}
        for backend in ("sdpa", "flex"):
            qkv = [t.clone().requires_grad_() for t in base]
            out = attend(*qkv, mask, backend)
            out.float().pow(2).sum().backward()
            outs[backend], grads[backend] = out.float(), [t.grad.float() for t in qkv]
        real = (~layout.padding[:2])[:, None, :, None]
        err = ((outs["sdpa"] - outs["flex"]).abs() * real).max().item()
        gerr = max(((a - b).abs() / (a.abs().max() + 1e-6)).max().item()
                   for a, b in zip(grads["sdpa"], grads["flex"]))
        rows.append({"dtype": str(dtype), "max_out_err": err, "max_rel_grad_err": gerr,
                     "ok": bool(err < tol and gerr < tol * 5)})
    print_table(rows, "flex vs SDPA on a mixed layout, forward and backward (CUDA)")
    print_json("flex_grad_check", rows)


def transformer_auto_vs_sdpa(device):
    torch.manual_seed(0)
    m = Transformer(TransformerArgs(dim=512, n_layers=4, n_heads=8)).to(device)
    exs = [[Segment("text", 100), Segment("image", 256), Segment("text", 50)]] * 4
    layout = build_layout(exs, MODALITIES, device=device)
    h = torch.randn(4, layout.seq_len, 512, device=device)
    rows = []
    outs = {}
    for impl in ("sdpa", "flex"):
        m.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(h, layout, attn_impl=impl)
        out.float().pow(2).mean().backward()
        outs[impl] = (out.float(), m.layers[0].attn.wqkv.weight.grad.float().clone())
    err = (outs["sdpa"][0] - outs["flex"][0]).abs().max().item()
    gerr = ((outs["sdpa"][1] - outs["flex"][1]).abs().max() / outs["sdpa"][1].abs().max()).item()
    rows.append({"check": "transformer bf16 sdpa vs flex", "max_out_err": err, "rel_grad_err": gerr})
    print_table(rows, "backbone under both backends (bf16 autocast)")
    print_json("transformer_backends", rows)


def throughput(device, preset_name, L, steps=6):
    rows = []
    for impl in ("sdpa", "flex"):
        torch.manual_seed(0)
        args = preset(preset_name, attn_impl=impl)
        text = TextAdapter(args.dim)
        image = ImageAdapter(args.dim, channels=8, patch_size=2, design="linear")  # 32x32x8 latents
        model = FusionModel(args, [text, image]).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        # 1:1 text:image tokens, images of 256 patches, packed rows of L
        exs = []
        g = torch.Generator().manual_seed(0)
        for i in range(2 * L // 512):
            ids = torch.randint(0, 256, (255,), generator=g)
            exs.append([Item("text", torch.cat([ids, torch.tensor([text.boi("image")])])),
                        Item("image", torch.randn(8, 32, 32, generator=g))])
        batch = model.collate(exs, max_len=L, pack=True)
        tokens = int((~batch.layout.padding).sum())
        torch.cuda.reset_peak_memory_stats()
        times = []
        for s in range(steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        t = sorted(times[2:])[len(times[2:]) // 2]
        n_params = sum(p.numel() for p in model.parameters())
        rows.append({"preset": preset_name, "attn": impl, "rows": batch.layout.batch_size, "L": L,
                     "tokens/step": tokens, "step_ms": t * 1e3, "tokens/s": tokens / t,
                     "MFU(6N)": 6 * n_params * tokens / t / 989e12,
                     "peak_GiB": torch.cuda.max_memory_allocated() / 2**30})
        del model, opt
        torch.cuda.empty_cache()
    print_table(rows, "FusionModel training throughput (bf16 autocast, AdamW, uncompiled model)")
    print_json("train_throughput", rows, gpu=torch.cuda.get_device_name())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="transfusion-0.16b")
    p.add_argument("--seq-len", type=int, default=4096)
    a = p.parse_args()
    device = torch.device("cuda")
    print(torch.__version__, torch.cuda.get_device_name())
    flex_vs_sdpa_gradients(device)
    transformer_auto_vs_sdpa(device)
    throughput(device, a.preset, a.seq_len)


if __name__ == "__main__":
    main()
