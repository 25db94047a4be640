"""Metrics as JSON lines in the run folder, and loss curves as a PNG."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .checkpoint import atomic_write_text

log = logging.getLogger("fusion_core")


class MetricsLog:
    """Appends one JSON object per line to ``run_dir/metrics.jsonl``."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run re-logs them) and lines a crash tore
        (warned, naming the file); rewritten atomically."""
        if not self.enabled or not self.path.exists():
            return
        records = _parse(self.path)
        keep = [json.dumps(r) for r in records if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"no metrics file at {path}")
    return _parse(path)


def _parse(path: Path) -> list[dict]:
    """The records of a metrics file; a line that is not a JSON object with an integer ``step``
    (a write cut short by a crash, or an edit) is skipped with a warning naming the file and line."""
    out = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        step = rec.get("step") if isinstance(rec, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            log.warning("%s:%d: dropped an unreadable line (a write cut short by a crash?)", path, n)
            continue
        out.append(rec)
    return out


def plot_metrics(run_dir: Path, out: Path | None = None) -> Path:
    """Render every ``loss*`` series and the learning rate of a run to ``run_dir/loss.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(run_dir) if "loss" in r]
    if not records:
        raise ValueError(f"{run_dir}: metrics.jsonl has no training records")
    keys = sorted({k for r in records for k in r if k.startswith("loss")})
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in records if k in r]
        ax.plot(*zip(*pts), label=k)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.legend()
    ax.set_title(Path(run_dir).name)
    ax2.plot([r["step"] for r in records], [r.get("lr", 0) for r in records])
    ax2.set_xlabel("step"), ax2.set_ylabel("learning rate")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
