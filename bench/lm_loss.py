"""The next-token loss through the LM head: plain logits vs ``fusion_core.lm_loss`` in chunks,
forward + backward, same inputs. Prints a table (time and peak memory of each, and their ratios)
and a JSON line. Peak memory: CUDA's allocator peak on a GPU; on the CPU the growth of the
process's resident peak, each variant measured in a fresh child process.

    python bench/lm_loss.py [--device cuda] [--rows 8192 --dim 1536 --vocab 65536]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F

from common import print_json, print_table, sync, timeit
from fusion_core.lm_loss import linear_cross_entropy


def _inputs(a, device):
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(a.rows, a.dim, generator=g)).to(device).requires_grad_()
    w = (torch.randn(a.vocab, a.dim, generator=g) * a.dim ** -0.5).to(device).requires_grad_()
    y = torch.randint(0, a.vocab, (a.rows,), generator=g).to(device)
    return h, w, y


def _step(variant, h, w, y, a, device):
    ac = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.bf16)
    with ac:
        if variant == "plain":
            loss = F.cross_entropy(F.linear(h, w).float(), y, reduction="sum")
        else:
            loss = linear_cross_entropy(h, w, None, y, chunk=a.chunk)
    loss.backward()
    h.grad = w.grad = None
    return loss


def child(a) -> dict:
    """One variant's time and peak memory (MB above the inputs)."""
    device = torch.device(a.device)
    h, w, y = _inputs(a, device)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ms = timeit(lambda: _step(a.child, h, w, y, a, device), device, warmup=1, iters=a.iters)
    loss = float(_step(a.child, h, w, y, a, device))
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"ms": ms, "peak_mb": peak, "loss": loss}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="under bf16 autocast (default on CUDA)")
    p.add_argument("--child", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    a = p.parse_args()
    a.bf16 = a.bf16 or a.device.startswith("cuda")
    if a.child:
        print(json.dumps(child(a)))
        return
    res = {}
    for variant in ("plain", "chunked"):
        argv = [sys.executable, __file__, *sys.argv[1:], "--child", variant]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        res[variant] = json.loads(out.strip().splitlines()[-1])
    rows = [{"variant": v, "rows x dim x vocab": f"{a.rows} x {a.dim} x {a.vocab}",
             "chunk": a.chunk if v == "chunked" else "-", "ms": r["ms"], "peak_mb": r["peak_mb"],
             "loss": r["loss"]} for v, r in res.items()]
    ratio = {"time_chunked_over_plain": res["chunked"]["ms"] / res["plain"]["ms"],
             "peak_chunked_over_plain": res["chunked"]["peak_mb"] / max(res["plain"]["peak_mb"], 1e-9),
             "loss_rel_diff": abs(res["chunked"]["loss"] - res["plain"]["loss"]) / abs(res["plain"]["loss"])}
    print_table(rows, f"LM-head cross-entropy, forward + backward ({a.device}, {'bf16 autocast' if a.bf16 else 'fp32'})")
    print_table([ratio], "chunked / plain (same run)")
    print_json("lm_loss", rows, device=a.device, bf16=a.bf16, **ratio)


if __name__ == "__main__":
    main()
