"""Time-series training and sampling speed: our FusionModel (time-series adapter, step token)
vs a re-implementation of the TransFusion paper's denoiser (``nn.TransformerEncoder``, post-norm,
GELU, sinusoidal positions, step token), same width/depth/heads/FF, same loop, same sampler.
Prints a table and a JSON line with ours/paper ratios.

    python bench/timeseries.py                     # CPU: small batch, few steps
    python bench/timeseries.py --device cuda       # bf16 autocast
    python bench/timeseries.py --device cuda --compile   # both compiled layer by layer
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from common import print_json, print_table, sync
from fusion_core import TransformerArgs
from fusion_core.diffusion import GaussianDiffusion, make_sampler
from fusion_core.embeddings import TimestepEmbedding, sinusoidal
from fusion_core.model import FusionModel, Item
from fusion_core.modalities.timeseries import TimeSeriesAdapter


class PaperDenoiser(nn.Module):
    """TransFusion's denoiser as published: Linear(F→d) + sinusoidal positions, the step as a
    token in front, ``nn.TransformerEncoder`` (post-norm, GELU, dropout 0.1), Linear(d→F)."""

    def __init__(self, features, d=256, layers=6, heads=8, ff=1024, dropout=0.1):
        super().__init__()
        self.inp, self.out, self.d = nn.Linear(features, d), nn.Linear(d, features), d
        self.t_embed = TimestepEmbedding(d)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout, activation="gelu", batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x, t):
        h = self.inp(x) + sinusoidal(torch.arange(x.shape[1], device=x.device), self.d)
        h = torch.cat([self.t_embed(t)[:, None], h], dim=1)
        return self.out(self.enc(h)[:, 1:])


def run(device, lengths, batch, steps, features, sample_n, sample_steps, dtype, compile_=False):
    rows = []
    diff = GaussianDiffusion("cosine", 1000, "v")
    for L in lengths:
        torch.manual_seed(0)
        ad = TimeSeriesAdapter(256, features).fit(torch.rand(100, features))
        ours = FusionModel(TransformerArgs(dim=256, n_layers=6, n_heads=8, ffn_dim=1024, dropout=0.1),
                           [ad], diffusion=diff).to(device)
        # SwiGLU's three matrices at 704 hold as many weights as GELU's two at 1024: same size as the paper
        ad_pm = TimeSeriesAdapter(256, features).fit(torch.rand(100, features))
        ours_pm = FusionModel(TransformerArgs(dim=256, n_layers=6, n_heads=8, ffn_dim=704, dropout=0.1),
                              [ad_pm], diffusion=diff).to(device)
        paper = PaperDenoiser(features).to(device)
        if compile_:  # regional compilation for both: each block / encoder layer
            ours.backbone.compile_blocks()
            ours_pm.backbone.compile_blocks()
            for layer in paper.enc.layers:
                layer.compile()
        x = [torch.rand(L, features, device=device) * 2 - 1 for _ in range(batch)]
        xb = torch.stack(x)
        batch_ours = ours.collate([[Item("timeseries", w)] for w in x])
        params = {n: sum(p.numel() for p in m.parameters()) for n, m in
                  (("ours", ours), ("ours704", ours_pm), ("paper", paper))}
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dtype == "bf16" else \
            (lambda: torch.autocast("cpu", enabled=False))
        res = {}
        for name, model, loss_fn in [
            ("ours", ours, lambda: ours.loss(batch_ours).loss),
            ("ours704", ours_pm, lambda: ours_pm.loss(batch_ours).loss),
            ("paper", paper, lambda: diff.training_loss(paper, xb).mean()),
        ]:
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            model.train()

            def step():
                with autocast():
                    loss = loss_fn()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            step()
            step()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            train_sps = batch * steps / (time.perf_counter() - t0)
            model.eval()
            denoise = paper if name == "paper" else model.span_denoiser("timeseries")
            sampler = make_sampler("dpm_solver", diff, sample_steps, clip_x0=1.0)
            with torch.no_grad(), autocast():
                sampler.sample(denoise, (sample_n, L, features), device=device)  # warm-up, same shape
                sync(device)
                t0 = time.perf_counter()
                sampler.sample(denoise, (sample_n, L, features), device=device)
                sync(device)
            res[name] = (train_sps, sample_n / (time.perf_counter() - t0))
        for name, label in (("ours", "ours, SwiGLU 1024"), ("ours704", "ours, SwiGLU 704 (paper's size)")):
            rows.append({"L": L, "batch": batch, "model": label, "params M": params[name] / 1e6,
                         "paper params M": params["paper"] / 1e6, "ours train samples/s": res[name][0],
                         "paper train samples/s": res["paper"][0], "train ratio": res[name][0] / res["paper"][0],
                         f"ours series/s ({sample_steps} steps)": res[name][1],
                         "paper series/s": res["paper"][1], "sample ratio": res[name][1] / res["paper"][1]})
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--lengths", type=int, nargs="*", default=[100, 384])
    p.add_argument("--batch", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--features", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="compile both models (blocks / encoder layers)")
    a = p.parse_args()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if a.compile:
        # three models x (training, sampling) x lengths recompile the regions the blocks share;
        # past dynamo's default limit of 8 the later rows would quietly run those layers eagerly
        torch._dynamo.config.recompile_limit = 64
    batch, steps = a.batch or (256 if cuda else 16), a.steps or (20 if cuda else 3)
    rows = run(device, a.lengths, batch, steps, a.features, sample_n=256 if cuda else 16,
               sample_steps=50, dtype="bf16" if cuda else "fp32", compile_=a.compile)
    where = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    where += ", compiled" if a.compile else ""
    print_table(rows, f"TransFusion denoiser, d=256 x 6 layers, ours vs paper architecture on {where}")
    print_json("timeseries", rows, device=where, torch=torch.__version__)


if __name__ == "__main__":
    main()
