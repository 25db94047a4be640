"""The text_timeseries recipe's pictures (generated series beside the real one per caption;
forecasts with and without a caption) and ``report.md``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from fusion_core.engine.recipe import read_train_time

from ..timeseries.plots import pyplot
from .config import TTSConfig
from .data import Pairs
from .properties import PROPERTIES


def _captioned_panels(captions: list[str], path: Path, draw, cols: int = 2) -> Path:
    """One panel per caption (titled with it), ``draw(ax, k)`` filling panel ``k``; saved as a PNG."""
    plt = pyplot()
    rows = -(-len(captions) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat[len(captions):]:
        ax.axis("off")
    for k, ax in enumerate(axes.flat[: len(captions)]):
        draw(ax, k)
        ax.set_title("\n".join(textwrap.wrap(captions[k], 70)), fontsize=7)
        ax.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def series_grid(pairs: Pairs, drawn: np.ndarray, path: Path) -> Path:
    """One panel per caption: the real series (black) and series generated from its caption
    (``drawn`` ``(N, k, L, F)``, in colour); the first channel."""

    def draw(ax, k):
        ax.plot(pairs.values[k, :, 0], color="black", lw=1.6, label="real")
        for j in range(drawn.shape[1]):
            ax.plot(drawn[k, j, :, 0], lw=1, alpha=0.8, label="generated" if j == 0 else None)

    return _captioned_panels(pairs.captions, path, draw)


def forecast_plot(pairs: Pairs, with_caption: np.ndarray, alone: np.ndarray, history: int, path: Path,
                  k: int = 6) -> Path:
    """The first ``k`` forecasts: history and truth (black), with the caption (blue), without (orange)."""
    steps = range(history, pairs.values.shape[1])

    def draw(ax, i):
        ax.plot(pairs.values[i, :, 0], color="black", lw=1.6, label="real")
        ax.plot(steps, alone[i, history:, 0], color="tab:orange", lw=1, label="history only")
        ax.plot(steps, with_caption[i, history:, 0], color="tab:blue", lw=1, label="history + caption")
        ax.axvline(history - 0.5, color="grey", ls=":")

    return _captioned_panels(pairs.captions[:k], path, draw)


def _table(title: str, accs: dict) -> list[str]:
    cols = list(PROPERTIES) + ["all"]
    lines = [f"**{title}** (share right)", "", "| group | " + " | ".join(cols) + " |",
             "| --- |" + " --- |" * len(cols)]
    for group, acc in accs.items():
        lines.append(f"| {group} | " + " | ".join(f"{acc[k]:.3f}" for k in cols) + " |")
    return lines + [""]


def write_report(out_dir: Path, run_dir: Path, c: TTSConfig, res: dict) -> Path:
    trained = read_train_time(run_dir)
    m, d = c.model, c.data
    pairs = f", {c.training_pairs} training pairs" if d.source == "synthetic" else ""
    lines = [f"# Text ↔ time series run `{Path(run_dir).name}`", "",
             f"Model {m.dim} wide, {m.n_layers} layers, series patches of {m.patch} steps; {c.train.steps} steps of "
             f"{c.train.batch_size} pairs ({d.series_first:.0%} series first, noise limit {d.noise_limit or 'off'}); "
             f"data {d.source} (series {d.length} steps{pairs}); seed {c.train.seed}.", "",
             f"Machine: {res['machine']}. Training {trained}, evaluation {res['eval_seconds']:.0f} s. "
             f"Sampling: {c.eval.sample.sampler}, {c.eval.sample.steps} steps, guidance {res['guidance']}.", "",
             f"Test pairs: {res['groups']}.", ""]
    if "text_to_series" in res:
        lines += _table("Text → series: properties of generated series measured back", res["text_to_series"])
        lines += _table("Series → text: properties parsed from generated captions", res["series_to_text"])
    if "disc" in res:
        lines += [f"Discriminative score of series generated from captions vs the real series with those "
                  f"captions: **{res['disc']:.4f}** (0 = indistinguishable).", ""]
    if "forecast" in res:
        f = res["forecast"]
        lines += [f"**Text-conditioned forecasting** ({f['n']} series, {f['history']} steps given):", "",
                  "| given | " + " | ".join(list(PROPERTIES) + ["all"]) + " |", "| --- |" + " --- |" * 5]
        for key, name in (("with_caption", "history + caption"), ("alone", "history only")):
            lines.append(f"| {name} | " + " | ".join(f"{f[key][k]:.3f}" for k in list(PROPERTIES) + ["all"]) + " |")
        if "late_events" in f:
            le = f["late_events"]
            lines += ["", f"Events after the history ({le['n']} series): right with the caption "
                      f"{le['with_caption']:.3f}, from the history only {le['alone']:.3f}."]
        lines += ["", "![forecasts](forecasts.png)", ""]
    lines += ["Captions written for test series (truth → generated):", ""]
    lines += [f"- {truth!r} → {made!r}" for truth, made in res["caption_examples"]]
    lines += ["", "Series generated from test captions (black: the real series of that caption):", "",
              "![text to series](text_to_series.png)", ""]
    out = Path(out_dir) / "report.md"
    out.write_text("\n".join(lines))
    return out
