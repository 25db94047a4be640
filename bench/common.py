"""Shared helpers for the benchmark scripts: timing, table printing, the JSON line."""

from __future__ import annotations

import json
import time

import torch

from fusion_core.engine.stats import mean_ci95


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, warmup: int = 2, iters: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def print_table(rows: list[dict], title: str) -> None:
    if not rows:
        return
    cols = list(rows[0])
    width = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    print(f"\n{title}")
    print(" | ".join(c.ljust(width[c]) for c in cols))
    print("-+-".join("-" * width[c] for c in cols))
    for r in rows:
        print(" | ".join(_fmt(r[c]).ljust(width[c]) for c in cols))


def mean_ci(values, digits: int = 4) -> str:
    """``"mean ± 95% interval"`` of repeated scores (``fusion_core.engine.stats.mean_ci95``); one
    score alone, which has no interval, as itself."""
    m, ci = mean_ci95(values)
    return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ± {ci:.{digits}f}"


def print_json(name: str, rows: list[dict], **extra) -> None:
    print(json.dumps({"bench": name, **extra, "rows": rows}))


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
