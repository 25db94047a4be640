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
from . import fidelity as FI
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


def fidelity_plot(res: dict, props, path: Path) -> Path:
    """Generated against real: event sizes (spikes, shifts), cycle amplitudes, extra outliers per
    series and the residual's lag-1 autocorrelation, as overlaid histograms."""
    plt = pyplot()
    per = res["per_series"]
    kinds = np.array([p.event_kind for p in props])
    panels = [("spike height", "event_size", kinds == "spike"), ("level-shift size", "event_size", kinds == "shift"),
              ("cycle amplitude", "amplitude", None), ("extra outliers per series", "extra_outliers", None),
              ("residual lag-1 autocorrelation", "resid_acf1", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 2.6))
    for ax, (title, key, mask) in zip(axes, panels):
        vals = {}
        for who in ("real", "generated"):
            v = np.asarray(per[key][who], dtype=float)
            v = v[mask] if mask is not None else v
            vals[who] = v[np.isfinite(v)]
        both = np.concatenate(list(vals.values()))
        if key == "extra_outliers":
            bins = np.arange(-0.5, max(both.max(), 1) + 1.5)
        else:
            bins = np.linspace(both.min(), both.max(), 30) if len(both) else 10
        drawn = [who for who in ("real", "generated") if len(vals[who])]  # none: e.g. real data without spikes
        for who in drawn:
            ax.hist(vals[who], bins=bins, histtype="step", lw=1.4, color={"real": "black"}.get(who, "tab:blue"),
                    density=True, label=f"{who} (median {np.median(vals[who]):.2f})")
        ax.set_title(title if drawn else f"{title}: none", fontsize=8)
        if drawn:
            ax.legend(fontsize=6)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _fidelity_lines(f: dict) -> list[str]:
    head = ("| caption group | n | series with extra outliers, real → generated (second method); of them away "
            "from the event | "
            "event size (second) | cycle amplitude (second) | residual lag-1 acf | noise level | "
            "disc (real-vs-real floor) |")
    lines = ["**Fidelity: what the captions do not constrain** (generated vs real series with the same captions; "
             "medians; in brackets the second, independent method: fidelity.py)", "", head, "|" + " --- |" * 8]

    def pair(d, fmt):
        return f"{fmt(d['real'])} → {fmt(d['generated'])}"

    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    num = lambda v: "–" if v != v else f"{v:.2f}"  # noqa: E731
    for g, row in f["groups"].items():
        cells = [g, str(row["n"])]
        for name, fmt in (("extra_outliers", pct), ("event_size", num), ("amplitude", num)):
            cells.append(f"{pair(row[name], fmt)} ({pair(row[name]['second'], fmt)})")
        if "extra_away" in row:  # reports written before the measure existed lack it
            cells[2] += f"; {pair(row['extra_away'], pct)}"
        cells += [pair(row["resid_acf1"], num), pair(row["noise"], num)]
        disc = row.get("disc")
        cells.append("–" if disc is None else f"{disc:.3f}" + (f" ({row['disc_floor']:.3f})" if "disc_floor" in row
                                                                else ""))
        lines.append("| " + " | ".join(cells) + " |")
    a = f["groups"]["all"]

    def times(second: bool) -> str:  # a rate whose real value is 0 has no ratio: say both
        d = a["extra_outliers"]["second"] if second else a["extra_outliers"]
        return f"{d['generated'] / d['real']:.2f}x" if d["real"] else f"{d['generated']:.1%} where real has none"

    lines += ["", f"Generated / real, all series: extra-outlier rate {times(False)} "
              f"({times(True)} by the second method), event size "
              f"{FI.ratio(a, 'event_size'):.2f}x ({FI.ratio(a, 'event_size', True):.2f}x), cycle amplitude "
              f"{FI.ratio(a, 'amplitude'):.2f}x ({FI.ratio(a, 'amplitude', True):.2f}x).", "",
              "![fidelity](fidelity.png)", ""]
    return lines


def _table(title: str, accs: dict) -> list[str]:
    cols = list(PROPERTIES) + ["all"]
    lines = [f"**{title}** (share right)", "", "| group | " + " | ".join(cols) + " |",
             "| --- |" + " --- |" * len(cols)]
    for group, acc in accs.items():
        lines.append(f"| {group} | " + " | ".join(f"{acc[k]:.3f}" for k in cols) + " |")
    return lines + [""]


def _guidance(res: dict) -> str:
    out = f"{res['guidance']}"
    interval, rescale = res.get("guidance_interval", [0.0, 1.0]), res.get("guidance_rescale", 0.0)
    if res["guidance"] and [float(v) for v in interval] != [0.0, 1.0]:
        out += f", interval {[float(v) for v in interval]}"
    if res["guidance"] and rescale:
        out += f", rescale {rescale}"
    return out


def write_report(out_dir: Path, run_dir: Path, c: TTSConfig, res: dict) -> Path:
    trained = read_train_time(run_dir)
    m, d = c.model, c.data
    pairs = f", {c.training_pairs} training pairs" if d.source == "synthetic" else ""
    lines = [f"# Text ↔ time series run `{Path(run_dir).name}`", "",
             f"Model {m.dim} wide, {m.n_layers} layers, series patches of {m.patch} steps; {c.train.steps} steps of "
             f"{c.train.batch_size} pairs ({d.series_first:.0%} series first, noise limit {d.noise_limit or 'off'}); "
             f"data {d.source} (series {d.length} steps, family {d.family}{pairs}); seed {c.train.seed}.", "",
             f"Machine: {res['machine']}. Training {trained}, evaluation {res['eval_seconds']:.0f} s. "
             f"Sampling: {c.eval.sample.sampler}, {c.eval.sample.steps} steps"
             + (f" ({c.eval.sample.spacing} spacing)" if c.eval.sample.spacing else "")
             + f", guidance {_guidance(res)}.", "",
             f"Test pairs: {res['groups']}.", ""]
    if "text_to_series" in res:
        lines += _table("Text → series: properties of generated series measured back", res["text_to_series"])
        lines += _table("Series → text: properties parsed from generated captions", res["series_to_text"])
    if "unseen_family" in res:
        u = res["unseen_family"]
        lines += _table(f"Series → text on {u['n']} series of a family of shapes training never drew "
                        f"(`{u['family']}`: trends of two straight pieces, harmonics, AR(1) noise)",
                        {u["family"]: u["series_to_text"]})
        lines += [f"- {truth!r} → {made!r}" for truth, made in u["examples"]] + [""]
    if "disc" in res:
        lines += [f"Discriminative score of series generated from captions vs the real series with those "
                  f"captions: **{res['disc']:.4f}** (0 = indistinguishable).", ""]
    if "fidelity" in res:
        lines += _fidelity_lines(res["fidelity"])
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
