"""CUDA checks that CPU tests cannot make: flex attention with gradients against SDPA on mixed
layouts, the transformer under ``auto`` (flex) vs ``sdpa`` in bf16, and compiled blocks
(``Transformer.compile_blocks``) against eager, outputs and gradients. Prints tables and one JSON
line per section (training throughput of the 0.16B preset is in ``multimodal.py --device cuda``).

    python bench/gpu_check.py
"""

from __future__ import annotations

import argparse
import copy

import torch

from common import print_json, print_table
from fusion_core import Segment, Transformer, TransformerArgs, build_layout
from fusion_core.attention import attend
from fusion_core.masks import AttentionMask

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


def compiled_vs_eager(device):
    torch.manual_seed(0)
    eager = Transformer(TransformerArgs(dim=512, n_layers=4, n_heads=8)).to(device)
    compiled = copy.deepcopy(eager).compile_blocks()
    exs = [[Segment("text", 100), Segment("image", 256), Segment("text", 50)]] * 4
    layout = build_layout(exs, MODALITIES, device=device)
    h = torch.randn(4, layout.seq_len, 512, device=device)
    w = torch.randn_like(h)
    rows = []
    for impl in ("sdpa", "flex"):
        res = []
        for m in (eager, compiled):
            m.zero_grad()
            out = m(h, layout, attn_impl=impl)
            (out * w).sum().backward()
            res.append((out, torch.cat([p.grad.flatten() for p in m.parameters()])))
        err = (res[0][0] - res[1][0]).abs().max().item()
        gerr = ((res[0][1] - res[1][1]).abs().max() / res[0][1].abs().max()).item()
        rows.append({"attn": impl, "dtype": "fp32", "max_out_err": err, "max_rel_grad_err": gerr,
                     "ok": bool(err < 1e-3 and gerr < 1e-3)})
    print_table(rows, "compiled blocks vs eager, 4-layer backbone, mixed layout")
    print_json("compiled_vs_eager", rows)


def main():
    argparse.ArgumentParser(description=__doc__).parse_args()
    device = torch.device("cuda")
    print(torch.__version__, torch.cuda.get_device_name())
    flex_vs_sdpa_gradients(device)
    transformer_auto_vs_sdpa(device)
    compiled_vs_eager(device)


if __name__ == "__main__":
    main()
