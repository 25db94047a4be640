"""CUDA checks that CPU tests cannot make: flex attention with gradients against SDPA on mixed
layouts, the transformer under ``auto`` (flex) vs ``sdpa`` in bf16, and compiled blocks
(``Transformer.compile_blocks``) against eager, outputs and gradients; the time-series denoiser
replayed as a CUDA graph (``GraphedCall``) and the chunked LM-head loss against their plain
versions. Prints tables and one JSON
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


@torch.no_grad()
def graphed_denoiser(device):
    """The time-series denoiser replayed as a CUDA graph (GraphedCall) against eager, on fresh
    inputs each call; whether the capture happened at all (``reason`` None) or fell back."""
    from fusion_core import FusionModel
    from fusion_core.graphs import GraphedCall
    from modalities.timeseries import TimeSeriesAdapter

    torch.manual_seed(0)
    model = FusionModel(TransformerArgs(dim=64, n_layers=4, n_heads=4), [TimeSeriesAdapter(64, 5)]).to(device).eval()
    eager, graphed = model.span_denoiser("timeseries"), GraphedCall(model.span_denoiser("timeseries"))
    err = 0.0
    for i in range(3):
        x, t = torch.randn(256, 24, 5, device=device), torch.full((256,), 100 * i + 7, device=device)
        err = max(err, (graphed(x, t) - eager(x, t)).abs().max().item())
    rows = [{"check": "GraphedCall(span_denoiser) vs eager", "captured": graphed.reason is None,
             "reason": graphed.reason or "-", "replays": graphed.replays, "max_err": err, "ok": err < 1e-4}]
    print_table(rows, "CUDA graph replay of the time-series denoiser")
    print_json("graphed_denoiser", rows)


def chunked_lm_loss(device):
    """fusion_core.lm_loss against the plain head + cross-entropy on CUDA under bf16 autocast."""
    import torch.nn.functional as F

    from fusion_core.lm_loss import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(4096, 512, device=device, requires_grad=True)
    w = (torch.randn(32768, 512, device=device) * 0.04).requires_grad_()
    y = torch.randint(0, 32768, (4096,), device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w).float(), y, reduction="sum")
        out = linear_cross_entropy(h, w, None, y, chunk=1024)
    gr, go = torch.autograd.grad(ref, (h, w)), torch.autograd.grad(out, (h, w))
    rel = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(go, gr))
    rows = [{"check": "chunked LM loss vs plain (bf16)", "loss_rel_err": abs(out.item() - ref.item()) / ref.item(),
             "max_rel_grad_err": rel, "ok": rel < 0.02}]
    print_table(rows, "chunked LM-head cross-entropy on CUDA")
    print_json("chunked_lm_loss", rows)


def main():
    argparse.ArgumentParser(description=__doc__).parse_args()
    device = torch.device("cuda")
    print(torch.__version__, torch.cuda.get_device_name())
    flex_vs_sdpa_gradients(device)
    transformer_auto_vs_sdpa(device)
    compiled_vs_eager(device)
    graphed_denoiser(device)
    chunked_lm_loss(device)


if __name__ == "__main__":
    main()
