"""The timeseries recipe's report: ``report.md`` with the scores table, the closed-form sine fit,
long-series scores and the pictures."""

from __future__ import annotations

from pathlib import Path

from fusion_core.engine.recipe import read_train_time
from fusion_core.storage import atomic_write_text

from . import sine_fit as SF
from .config import ALL_METRICS, TSConfig

NAMES = {"disc": "discriminative (GRU)", "pred": "predictive MAE (GRU)", "lds": "LDS (transformer)",
         "lps": "LPS (causal transformer)", "corr": "correlational", "fid": "context-FID (GRU embedding)",
         "jsd": "marginal JSD"}


def sine_fit_text(fit: dict) -> str:
    """One line for ``evaluate``'s ``sine_fit`` result (the log and the report both print it)."""
    fk, rl = fit["fake"], fit["real"]
    return (f"{fk['mean']:.4f}, {100 * fk['off']:.1f}% of curves off by more than {SF.SINE_OFF}, "
            f"in {100 * fk['windows_off']:.1f}% of the windows (real windows: {rl['mean']:.4f}, "
            f"{100 * rl['off']:.1f}% off)")


def _cell(v: dict) -> str:
    ci = f" ± {v['ci95']:.4f}" if v["ci95"] == v["ci95"] and v["ci95"] > 0 else ""
    return f"{v['mean']:.4f}{ci}"


def _real_kind(c) -> str:
    if c.data.source == "sine":
        return "freshly drawn real windows"
    if c.eval.against == "train":
        return "real training windows (eval.against=train: the papers' protocol)"
    return "held-out real windows"


def write_report(run_dir: Path, c: TSConfig, result: dict, pics: list[Path], name: str = "report.md") -> Path:
    trained = read_train_time(run_dir)
    m = c.model
    lines = [f"# TransFusion time-series run: `{run_dir.name}`", "",
             f"Data `{c.data.source}`, windows of {c.data.length} steps; model {m.dim} wide, "
             f"{m.n_layers} layers, {m.prediction}-prediction, {m.schedule} schedule, "
             f"T = {m.T}; {c.train.steps} steps of batch {c.train.batch_size}.", "",
             f"Training {trained}" + (f" on {trained.machine}" if trained.machine else "") + "; evaluation on "
             f"{result['machine']}: sampling {result['n_fake']} series "
             f"with {result['sampler']} ({result['steps']} steps"
             + (f", {result['spacing']} spacing" if "spacing" in result else "")  # older evals lack it
             + f") {result['sample_seconds']:.1f} s.", "",
             f"Scores on {result['n_real']} {_real_kind(c)} vs {result['n_fake']} generated "
             f"(mean ± 95% interval over {c.eval.repeats} runs where repeated; lower is better):", ""]
    ran = [k for k in result["scores"]]
    skipped = [k for k in ALL_METRICS if k not in ran]
    lines[-1:-1] = [f"Metric set: {', '.join(ran)}" + (f" (not run: {', '.join(skipped)} — the full set is "
                                                        f"`fusion evaluate {run_dir} --full`)" if skipped else
                                                        " (the full set)") + f"; scoring {result.get('score_seconds', 0):.0f} s.", ""]
    ref = result.get("reference")
    if ref:
        kind = result.get("reference_kind") or "real training windows"
        lines += [f"The real-vs-real floor: {kind}, scored the same way.", "",
                  "| metric | generated | real vs real (floor) |", "| --- | --- | --- |"]
    else:
        lines += ["| metric | value |", "| --- | --- |"]
    for k, v in result["scores"].items():
        lines.append(f"| {NAMES[k]} | {_cell(v)} |" + (f" {_cell(ref[k])} |" if ref else ""))
    if result.get("sine_fit"):
        lines += ["", ("Sine fit (closed form: each generated curve's RMS distance from the nearest "
                       f"sine of the generator's family): {sine_fit_text(result['sine_fit'])}.")]
    if result.get("long"):
        lg = result["long"]
        lines += ["", f"Windows cut from series {lg['factor']}x the training window (each new window "
                      f"conditioned on the previous one's tail: {lg['cond_sampler']}, resampling "
                      f"{lg['resample']}x; {lg['sample_seconds']:.1f} s), scored against "
                      + ("windows cut the same way from real sine series of that length"
                         if c.data.source == "sine" else "the same held-out windows") + ":", "",
                  "| metric | native windows | cut from long series |", "| --- | --- | --- |"]
        for k, v in lg["scores"].items():
            lines.append(f"| {NAMES[k]} | {result['scores'][k]['mean']:.4f} | {v['mean']:.4f} |")
    lines += ["", *[f"![{p.stem}]({p.name})" for p in pics], ""]
    out = run_dir / name
    atomic_write_text(out, "\n".join(lines))
    return out
