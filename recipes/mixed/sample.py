"""``fusion sample RUN_DIR``: continue prompts with the trained model, switching modalities as the
model decides — text until it writes a begin marker, then a span of that modality, then text again.

    fusion sample RUN --prompt "a circle" --prompt "a line"        # each row continued
    fusion sample RUN --prompt "a circle" --force pen               # start with a span of pen
    fusion sample RUN --prompt "a stroke" --shape pen=20,2          # the span's shape
    fusion sample RUN sample.n=8 sample.temperature=0.7 sample.guidance=3

Outputs in the run folder: ``samples.jsonl`` (each row's segments, values decoded by their
adapters), ``samples.md`` (text and each item's ``describe()``) and ``samples.png`` (items that
``render()`` themselves).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fusion_core import generation as gen
from fusion_core.engine.recipe import load_model, parse_command
from fusion_core.model import Item
from fusion_core.storage import atomic_write_text

from . import data as D
from .train import SHAPES_FILE


def load_run(run_dir: Path, overrides=()):
    from . import recipe

    c = recipe.run_config(run_dir, overrides)
    return c, load_model(run_dir, c)


def span_shapes(model, c, run_dir: Path, given: dict[str, tuple]) -> dict[str, tuple]:
    """Per continuous modality the writer marks: ``--shape``, else ``sample.shapes``, else the
    commonest shape of the training data."""
    recorded = {}
    path = Path(run_dir) / SHAPES_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())
    w = model.adapters[c.model.writer]
    out = {}
    for name, a in model.adapters.items():
        if a.kind != "continuous" or w.begin_marker(name) is None:
            continue
        shape = given.get(name) or c.sample.shapes.get(name) or recorded.get(name)
        if shape:
            out[name] = tuple(int(d) for d in shape)
    return out


def _shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = text.partition("=")
    try:
        return name, tuple(int(d) for d in dims.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape is NAME=D1,D2,... (e.g. pen=20,2), got {text!r}") from None


def continue_prompts(model, c, run_dir: Path, prompts: list, shapes: dict | None = None, force: str | None = None):
    """Each prompt continued ``c.sample.n`` times (a generator per row: rows are independent)."""
    s = c.sample
    shapes = span_shapes(model, c, run_dir, shapes or {})
    w = model.adapters[c.model.writer]
    bos = [Item(w.name, torch.tensor([w.bos_id]))]  # an empty prompt: the model starts from <bos>
    rows = [p if p != "" else bos for p in prompts for _ in range(s.n)]
    gens = [torch.Generator().manual_seed(s.seed * 1_000_003 + i) for i in range(len(rows))]
    return gen.generate(model, rows, s, shapes, writer=c.model.writer, guidance=s.guidance_args,
                        max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k or None,
                        force=force, generator=gens, progress=True), rows


def write_samples(model, rows: list, outs: list, folder: Path, stem: str = "samples") -> list[Path]:
    """``stem.jsonl`` (decoded segments), ``stem.md`` (text and descriptions), ``stem.png``."""
    folder = Path(folder)
    lines, md = [], []
    for prompt, g in zip(rows, outs):
        prompt = prompt if isinstance(prompt, str) else ""
        lines.append(json.dumps({"prompt": prompt, "stop": g.stop,
                                 "segments": [{m: D.jsonable(v)} for m, v in g.segments]}))
        parts = []
        for m, v in g.segments:
            if isinstance(v, str):
                parts.append(repr(v))
            else:
                desc = model.adapters[m].describe(v) or f"shape {tuple(getattr(v, 'shape', ()))}"
                parts.append(f"[{m}: {desc}]")
        md.append(f"- `{prompt}` → " + " ".join(parts) + f" ({g.stop})")
    atomic_write_text(folder / f"{stem}.jsonl", "\n".join(lines) + "\n")
    atomic_write_text(folder / f"{stem}.md", "\n".join(md) + "\n")
    written = [folder / f"{stem}.jsonl", folder / f"{stem}.md"]
    picture = render_grid(model, rows, outs, folder / f"{stem}.png")
    return written + ([picture] if picture else [])


def render_grid(model, rows: list, outs: list, path: Path) -> Path | None:
    """A grid of every span whose adapter renders itself (one row per prompt); None if none does."""
    items = [(p if isinstance(p, str) else "", m, v) for p, g in zip(rows, outs) for m, v in g.segments
             if not isinstance(v, str)]
    if not items:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(items), 6)
    nrows = -(-len(items) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 2.2 * nrows), squeeze=False)
    drawn = 0
    for ax, (prompt, m, v) in zip(axes.flat, items):
        if model.adapters[m].render(v, ax):
            ax.set_title(f"{prompt[:18]}\n({m})", fontsize=7)
            drawn += 1
        else:
            ax.axis("off")
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=90)
    plt.close(fig)
    return path if drawn else None


def sample(run_dir: Path, argv: list[str]) -> list[Path]:
    p = argparse.ArgumentParser(prog="fusion sample RUN_DIR", description="continue prompts, switching "
                                "modalities as the model decides (config values as key=value, e.g. sample.n=8)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt in the writer's text (repeatable)")
    p.add_argument("--force", help="start each row with a span of this modality")
    p.add_argument("--shape", action="append", default=[], type=_shape_arg,
                   help="NAME=D1,D2,...: the shape of NAME's spans (default: the training data's commonest)")
    a, overrides = parse_command(p, argv)
    c, model = load_run(run_dir, overrides)
    prompts = a.prompt or [""]
    outs, rows = continue_prompts(model, c, run_dir, prompts, dict(a.shape), a.force)
    files = write_samples(model, rows, outs, Path(run_dir))
    for r, g in zip(rows, outs):
        r = r if isinstance(r, str) else ""
        print(f"{r!r} → " + " ".join(repr(v) if isinstance(v, str) else f"[{m} {tuple(getattr(v, 'shape', ()))}]"
                                     for m, v in g.segments) + f" ({g.stop})")
    print("wrote " + ", ".join(str(f) for f in files))
    return files
