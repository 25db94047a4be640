"""Attention backends on Transfusion-style layouts: forward+backward time, peak memory, and the
ratio to causal-only SDPA (the floor: no mask at all).

Layout: documents of text runs around one 256-patch image (~50% image positions), packed into rows
of length L; B * L fixed. Usage::

    python bench/attention.py                 # CPU, float32, small lengths
    python bench/attention.py --device cuda   # bf16, L = 2048 ... 8192, B * L = 8192

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import random

import torch

from common import print_json, print_table, timeit
from fusion_core.attention import BackendUnavailable, attend, resolve_backend
from fusion_core.layout import ModalitySpec, Segment, build_layout
from fusion_core.masks import AttentionMask

MODALITIES = {"text": ModalitySpec("text", "discrete"),
              "image": ModalitySpec("image", "continuous", "bidirectional")}


def transfusion_layout(B: int, L: int, image: int = 256, seed: int = 0):
    rng = random.Random(seed)
    examples, total = [], 0
    while total < B * L:
        before = rng.randint(16, image - 16)
        doc = [Segment("text", before), Segment("image", image), Segment("text", image - before)]
        examples.append(doc)
        total += 2 * image
    layout = build_layout(examples, MODALITIES, max_len=L, pack=True)
    return layout.to("cpu"), B


def run(device: torch.device, lengths: list[int], tokens: int, heads: int, head_dim: int, dtype):
    rows = []
    for L in lengths:
        B = max(1, tokens // L)
        layout, _ = transfusion_layout(B, L)
        layout = layout.to(device)
        # keep exactly B rows (packing may produce one extra partial row)
        doc, span = layout.document[:B].contiguous(), layout.span[:B].contiguous()
        image_frac = float((span >= 0).float().mean())
        mixed = AttentionMask("mixed", doc, span)
        causal = AttentionMask.causal()
        q, k, v = (torch.randn(B, heads, L, head_dim, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        grad = torch.randn(B, heads, L, head_dim, device=device, dtype=dtype)

        def fwd_bwd(mask, backend):
            def fn():
                out = attend(q, k, v, mask, backend)
                out.backward(grad)
            return fn

        def fwd_only(mask, backend):
            def fn():
                with torch.no_grad():
                    attend(q, k, v, mask, backend)
            return fn

        floor = timeit(fwd_bwd(causal, "sdpa"), device)
        cases = [("sdpa causal-only (floor)", causal, "sdpa"), ("sdpa dense mask", mixed, "sdpa"),
                 ("flex block mask", mixed, "flex"), ("xformers bias", mixed, "xformers")]
        for name, mask, backend in cases:
            row = {"L": L, "B": B, "image_frac": round(image_frac, 2), "backend": name}
            try:
                resolve_backend(backend, device, mask.kind, needs_grad=True)
                fn, mode = fwd_bwd(mask, backend), "fwd+bwd"
            except BackendUnavailable as e:
                if backend == "flex" and device.type == "cpu":
                    fn, mode = fwd_only(mask, backend), "fwd only (no CPU backward)"
                else:
                    rows.append({**row, "mode": "unavailable: " + str(e).split(";")[0][:48], "ms": float("nan"),
                                 "x_floor": float("nan"), "peak_MiB": float("nan")})
                    continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if mask is mixed:  # build renderings outside the timed region (shared by all layers)
                mixed._cache.clear()
            ms = floor if name.endswith("(floor)") else timeit(fn, device)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            rows.append({**row, "mode": mode, "ms": ms,
                         "x_floor": ms / floor if mode == "fwd+bwd" else float("nan"),
                         "peak_MiB": peak})
        # mask construction cost, once per batch
        for name, build in [("dense", lambda: AttentionMask("mixed", doc, span).dense()),
                            ("flex BlockMask", lambda: AttentionMask("mixed", doc, span).block_mask())]:
            rows.append({"L": L, "B": B, "image_frac": round(image_frac, 2),
                         "backend": f"build {name} mask", "mode": "once per batch",
                         "ms": timeit(build, device, warmup=1, iters=3), "x_floor": float("nan"),
                         "peak_MiB": float("nan")})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--lengths", type=int, nargs="*")
    p.add_argument("--tokens", type=int, help="B * L")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        lengths, tokens, dtype = a.lengths or [2048, 4096, 8192], a.tokens or 8192, torch.bfloat16
    else:
        lengths, tokens, dtype = a.lengths or [512, 1024, 2048], a.tokens or 2048, torch.float32
        a.heads = min(a.heads, 8)
    rows = run(device, lengths, tokens, a.heads, a.head_dim, dtype)
    print_table(rows, f"attention fwd+bwd on {device} ({dtype}, {a.heads} heads of {a.head_dim})")
    print_json("attention", rows, device=str(device), torch=torch.__version__,
               gpu=torch.cuda.get_device_name() if device.type == "cuda" else None)


if __name__ == "__main__":
    main()
