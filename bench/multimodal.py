"""Multimodal speed: (1) training tokens/s of our FusionModel vs the reference open implementation
transfusion-pytorch (the `bench` extra) at equal width/depth/heads and equal sequences; (2) the
time of one diffusion step against a KV-cached 1024-token prompt vs a 16-token prompt (the prefix
is computed once, so the step should barely notice it); (3) on CUDA, training tokens/s of the
paper's 0.16B preset on packed rows of 4096 under bf16 autocast, for SDPA and flex attention,
eager and with compiled blocks (``train.compile``). Prints tables and one JSON line.

    python bench/multimodal.py [--device cuda] [--rows 4] [--profile]
"""

from __future__ import annotations

import argparse
import time
import traceback

import torch

from common import print_json, print_table, sync, timeit
from fusion_core import TransformerArgs, preset
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


def _paper_size(preset_name, L, rows, attn, device):
    """A Transfusion-sized model and examples: text + 32x32x8 latents as 2x2 patches (256
    positions), 1:1 text:image tokens, enough to pack ``rows`` rows of ``L``."""
    torch.manual_seed(0)
    args = preset(preset_name, attn_impl=attn)
    text = TextAdapter(args.dim)
    image = ImageAdapter(args.dim, channels=8, patch_size=2, design="linear")
    model = FusionModel(args, [text, image]).to(device)
    g = torch.Generator().manual_seed(0)
    exs = []
    for _ in range(rows * L // 512):
        ids = torch.randint(0, 256, (255,), generator=g)
        exs.append([Item("text", torch.cat([ids, torch.tensor([text.boi("image")])])),
                    Item("image", torch.randn(8, 32, 32, generator=g))])
    return model, exs


def cuda_throughput(preset_name, L, rows, attn, compiled, steps=8, profile=False, device="cuda", mode="default"):
    """Training tokens/s of a bare loop (loss, backward, fused AdamW; bf16 autocast) over the
    examples collated once (as a data loader would hand them over; the attention mask is built
    in every step). ``first_loss`` compares compiled with eager."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    model, exs = _paper_size(preset_name, L, rows, attn, device)
    if compiled:  # mode "reduce-overhead": each compiled block replayed as a CUDA graph
        model.backbone.compile_blocks(**({} if mode == "default" else {"mode": mode}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    batch = model.collate(exs, max_len=L, pack=True)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model.loss(batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return out.loss

    t0 = time.perf_counter()
    first_loss = step().item()  # compiles when ``compiled``
    first_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ms = timeit(step, device, warmup=2, iters=steps)
    row = _row("bare", preset_name, attn, compiled if mode == "default" else mode, batch.layout, first_loss,
               first_s, ms, model)
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as p:
            step()
            sync(device)
        key = "cuda_time_total" if cuda else "cpu_time_total"
        print(p.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60))
    return row


def trainer_throughput(preset_name, L, rows, attn, compiled, steps=8, device="cuda", workers=0):
    """The same through :class:`Trainer` (``train.compile``, bf16 autocast, collation of the
    examples in every step, per-example seeded noise, gradient clipping, the non-finite check
    on the device, EMA): what ``fusion run`` gets. Timed per step with a sync after each, as the
    bare loop is; the Trainer itself syncs only when it logs. With ``workers``, the steps'
    batches come from ``train.workers`` processes (pinned, copied without blocking), as ``fit``
    takes them; without, each step collates in the loop."""
    import tempfile

    from fusion_core.engine.trainer import Trainer, TrainArgs

    device = torch.device(device)
    model, exs = _paper_size(preset_name, L, rows, attn, device)
    args = TrainArgs(steps=10**6, batch_size=len(exs), compile=compiled, progress=False,
                     ema_decay=0.999, device=str(device), workers=workers)
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(model, exs, lambda m, ex, seeds: m.collate(ex, max_len=L, pack=True, seeds=seeds),
                          args, d)
        t0 = time.perf_counter()
        batches = trainer._steps()  # fit's source of batches: in the loop, or from the workers
        first_loss = trainer._record(trainer.train_step(next(batches)))["loss"]  # reading it waits for the GPU
        first_s = time.perf_counter() - t0
        ms = timeit(lambda: trainer.train_step(next(batches)), device, warmup=2, iters=steps)
    layout = model.collate(exs, max_len=L, pack=True).layout  # what each step trains on
    return _row(f"Trainer{f', {workers} workers' if workers else ''}", preset_name, attn, compiled, layout,
                first_loss, first_s, ms, model)


def _row(loop, preset_name, attn, compiled, layout, first_loss, first_s, ms, model):
    tokens = int((~layout.host.padding).sum())
    n_params = sum(p.numel() for p in model.parameters())
    cuda = layout.device.type == "cuda"
    return {"loop": loop, "preset": preset_name, "attn": attn, "compiled": compiled,
            "rows": layout.batch_size, "L": layout.seq_len, "tokens/step": tokens, "first_loss": first_loss,
            "first_step_s": first_s, "step_ms": ms, "tokens/s": tokens / ms * 1e3,
            "MFU(6N)": 6 * n_params * tokens / (ms / 1e3) / 989e12,  # H100 SXM dense bf16 peak
            "peak_GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")}


def cuda_section(rows, profile, presets=("transfusion-0.16b",), all_rows=False):
    """The first preset at length 4096, flex attention and compiled blocks: a bare loop (also with
    the blocks replayed as CUDA graphs, ``reduce-overhead``), the Trainer collating in the loop
    and with 2 workers, and the bare loop at twice the rows; each further preset (e.g. 0.76B) bare
    and through the Trainer. ``all_rows`` adds SDPA and eager blocks in the bare loop."""
    out = []

    def run(fn, *args, **kw):
        try:
            out.append(fn(*args, **kw))
            print_table(out[-1:], "")
        except Exception:  # one failing configuration must not hide the others' figures
            traceback.print_exc()
        torch.cuda.empty_cache()

    first = presets[0]
    for attn in ("sdpa", "flex") if all_rows else ("flex",):
        for compiled in (False, True) if all_rows else (True,):
            run(cuda_throughput, first, 4096, rows, attn, compiled, profile=profile and compiled and attn == "flex")
    run(cuda_throughput, first, 4096, rows, "flex", True, mode="reduce-overhead")
    run(trainer_throughput, first, 4096, rows, "flex", True)
    run(trainer_throughput, first, 4096, rows, "flex", True, workers=2)
    run(cuda_throughput, first, 4096, 2 * rows, "flex", True)
    for name in presets[1:]:
        run(cuda_throughput, name, 4096, rows, "flex", True)
        run(trainer_throughput, name, 4096, rows, "flex", True)
    print_table(out, f"FusionModel training throughput, rows of 4096, bf16, {torch.cuda.get_device_name()} "
                     "(goals: Trainer >= 250k tokens/s at 0.16B, MFU >= 35% at 0.76B)")
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--rows", type=int, default=4, help="CUDA section: packed rows of 4096 per step")
    p.add_argument("--profile", action="store_true", help="CUDA section: kernel table of one compiled flex step")
    p.add_argument("--only-cuda", action="store_true", help="skip the comparison and cached-step sections")
    p.add_argument("--all-rows", action="store_true", help="CUDA section: also SDPA and eager blocks")
    p.add_argument("--presets", nargs="+", default=["transfusion-0.16b"],
                   help="CUDA section: backbone presets (the first gets the full set of rows)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda and a.only_cuda:
        big = cuda_section(a.rows, a.profile, a.presets, a.all_rows)
        print_json("multimodal_cuda", big, device=torch.cuda.get_device_name())
        return
    train = train_throughput(device, a.dim, a.depth, a.heads, batch=16 if cuda else 4, text_len=64,
                             n_images=2, side=8, steps=10 if cuda else 3)
    ratio = train[0]["tokens/s"] / train[1]["tokens/s"] if len(train) > 1 else float("nan")
    print_table(train, f"training throughput, dim {a.dim} x depth {a.depth}, {device}")
    print(f"ours / transfusion-pytorch tokens/s: {ratio:.2f}x")
    # the prefix's cost relative to the image's own is a matter of width: measure at ours and at
    # the 0.16B preset's (768 wide; the ratio does not depend on depth)
    steps = cached_step(device, a.dim, a.depth, a.heads, side=32) + cached_step(device, 768, 2, 12, side=32)
    print_table(steps, "one diffusion step of a 256-patch image against a KV-cached prompt")
    big = cuda_section(a.rows, a.profile, a.presets, a.all_rows) if cuda else []
    print_json("multimodal", train + steps + big, device=str(device), train_ratio=ratio)


if __name__ == "__main__":
    main()
