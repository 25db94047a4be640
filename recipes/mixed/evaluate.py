"""``fusion evaluate RUN_DIR``: each modality's loss on the held-out examples — next-token
cross-entropy (nats per token) for discrete modalities, the diffusion loss for continuous ones —
at fixed diffusion steps and noise, so two runs are scored on exactly the same draws; then held-out
prompts continued by the model, in a report whose samples each adapter describes and draws itself.

    fusion evaluate RUN
    fusion evaluate RUN eval.batches=32 eval.samples=8
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from fusion_core.engine.recipe import machine_description, parse_command, read_train_time
from fusion_core.storage import atomic_write_text

from . import data as D
from .sample import continue_prompts, load_run, write_samples
from .train import HELD_OUT_FILE, encode_example


def held_out_losses(model, examples: list, batch_size: int, batches: int, max_len: int, seed: int) -> dict:
    """Per modality, the mean loss over held-out ``examples`` (each span's step and noise keyed
    to its example's index: the same draws in every run) and how many targets it averaged."""
    totals, counts = {}, {}
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(min(batches, math.ceil(len(examples) / batch_size))):
                chunk = examples[b * batch_size : (b + 1) * batch_size]
                seeds = [seed * 1_000_003 + b * batch_size + i for i in range(len(chunk))]
                out = model.loss(model.collate(chunk, max_len=max_len, pack=True, seeds=seeds))
                for name, value in out.parts.items():
                    n = out.counts[name]
                    totals[name] = totals.get(name, 0.0) + float(value) * n
                    counts[name] = counts.get(name, 0) + n
    finally:
        model.train(was)
    return {name: {"loss": totals[name] / max(counts[name], 1), "targets": counts[name],
                   "kind": model.adapters[name].kind} for name in totals}


def prompts_from(raws: list, writer: str, n: int) -> list[str]:
    """Held-out examples' writer text up to their first span: what the model is asked to continue."""
    out = []
    for raw in raws:
        head = []
        for name, value in D.check_example(raw, "held out", {writer} | {k for item in raw for k in item}):
            if name != writer:
                break
            head.append(value)
        if head:
            out.append("".join(head))
        if len(out) == n:
            break
    return out


def evaluate(run_dir: Path, argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="fusion evaluate RUN_DIR", description="held-out losses per modality and "
                                "samples (config values as key=value, e.g. eval.batches=32)")
    _, overrides = parse_command(p, argv)
    c, model = load_run(run_dir, overrides)
    t0 = time.time()
    path = Path(run_dir) / HELD_OUT_FILE
    raws = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    writer = c.model.writer
    examples = [encode_example(model, raw, f"{HELD_OUT_FILE}:{i + 1}", writer) for i, raw in enumerate(raws)]
    losses = held_out_losses(model, examples, c.eval.batch_size, c.eval.batches, c.data.max_len, c.eval.seed) \
        if examples else {}
    prompts = prompts_from(raws, writer, c.eval.samples) or [""]
    c.sample.n = 1
    outs, rows = continue_prompts(model, c, run_dir, prompts)
    files = write_samples(model, rows, outs, Path(run_dir), stem="eval_samples")
    result = {"held_out_examples": len(examples), "losses": losses, "seconds": time.time() - t0,
              "machine": machine_description()}
    atomic_write_text(Path(run_dir) / "eval.json", json.dumps(result, indent=1))
    write_report(run_dir, c, result, files)
    for name, v in sorted(losses.items()):
        print(f"{name:12s} {v['kind']:10s} held-out loss {v['loss']:.4f} over {v['targets']} targets")
    return result


def write_report(run_dir: Path, c, result: dict, files: list[Path]) -> Path:
    train = read_train_time(Path(run_dir))
    lines = [f"# mixed: {Path(run_dir).name}", "",
             f"Modalities: {', '.join(sorted(c.model.adapters or ['text', 'image']))} (writer {c.model.writer!r}); "
             f"data {c.data.source}; {c.train.steps} steps of {c.train.batch_size}; trained in {train}.", "",
             "## Held-out losses", "",
             f"{result['held_out_examples']} held-out examples; each span's diffusion step and noise fixed by its "
             "example (the same draws in every run). Discrete: cross-entropy in nats per token; continuous: the "
             "diffusion loss of the modality's prediction type.", "",
             "| modality | kind | loss | targets |", "| --- | --- | --- | --- |"]
    for name, v in sorted(result["losses"].items()):
        lines.append(f"| {name} | {v['kind']} | {v['loss']:.4f} | {v['targets']} |")
    lines += ["", "## Samples (held-out prompts continued)", ""]
    md = next((f for f in files if f.suffix == ".md"), None)
    if md is not None:
        lines += md.read_text().splitlines()
    png = next((f for f in files if f.suffix == ".png"), None)
    if png is not None:
        lines += ["", f"![samples]({png.name})"]
    lines += ["", f"Machine: {result['machine']}; evaluation {result['seconds']:.0f} s."]
    out = Path(run_dir) / "report.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
