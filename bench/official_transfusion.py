"""Ours vs the official TransFusion code (Sikder et al. 2023, github.com/fahim-sikder/TransFusion,
Apache-2.0) at equal CPU budget (#27): the same windows, the same machine, the same wall-clock
training time, the same number of series sampled, scored by *our* metrics (the preset's set, the
same real windows, the same classifier seeds) and by the official repository's own long
discriminative / predictive scores (``long_discriminative_score.py``, ``long_predictive_score.py``).

    git clone https://github.com/fahim-sikder/TransFusion /path/to/TransFusion   # its files, once
    python bench/official_transfusion.py --repo /path/to/TransFusion --preset stocks24
    python bench/official_transfusion.py --repo ... --ours RUN      # reuse a finished run of the preset

Ours: ``fusion run timeseries --preset P`` (trained here unless ``--ours`` names a finished run),
sampled with the preset's sampler. Theirs: the repository's ``TransEncoder`` + ``GaussianDiffusion1D``
with the hyperparameters of its ``train.py`` (256 wide, 6 layers, 8 heads, FF 1024, dropout 0.1,
v-prediction, cosine schedule, T = 1000, L2 loss, Adam 1e-4 (0.9, 0.99), batches of 256, the
windows shuffled once as its ``MakeDATA`` does), trained on the same min-max-scaled windows until
its wall clock reaches our training time (or ``--budget-s``), then sampled with its own DDIM
(``sampling_timesteps=--their-steps``, eta 0) — its default, 1000 DDPM steps, would take hours for
3000 series on a CPU, and its DDIM at the shipped eta 1 returns NaN for every series at few steps
(``sqrt(1 - a_next - sigma^2)`` of a float32 rounding below zero where the cosine schedule's
alpha-bar is ~2e-9 at t = T - 1). Differences from ``train.py`` kept out of the comparison: no
TensorBoard, no sample grids every 500 epochs, no checkpoint. ``--their-batch`` changes its batch
of 256 where a machine cannot hold it (at length 384 its full attention over 384 steps is
OOM-killed at 24 GiB): a departure from its hyperparameters that the table's budget column names.

Prints a table (one row per model, plus the real-vs-real floor) and a JSON line with the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import print_json, print_table
from fusion_core import generation as gen
from fusion_core.engine.cli import main as fusion
from fusion_core.engine.recipe import read_train_time
from fusion_core.recipes.timeseries.evaluate import held_out, real_floor, score
from fusion_core.recipes.timeseries.report import NAMES
from fusion_core.recipes.timeseries.sample import load_run
from fusion_core.recipes.timeseries.train import MODALITY, window_shape

OFFICIAL_FILES = ("ddpm.py", "utils.py", "long_discriminative_score.py", "long_predictive_score.py")


def load_official(repo: Path) -> dict:
    """The official repository's modules, imported from its files (the user's own copy: this runs
    its code, as running its train.py would)."""
    missing = [f for f in OFFICIAL_FILES if not (repo / f).is_file()]
    if missing:
        raise SystemExit(f"--repo {repo}: not the TransFusion repository's files (missing {missing})")
    sys.path.insert(0, str(repo))  # its metric files import its utils.py by name
    mods = {}
    for f in OFFICIAL_FILES:
        spec = importlib.util.spec_from_file_location(f"official_{f[:-3]}", repo / f)
        mods[f[:-3]] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[f[:-3]])
    return mods


def train_official(mods: dict, train01: np.ndarray, budget_s: float, seed: int, steps: int,
                   batch: int = 256) -> tuple[torch.nn.Module, dict]:
    """The official model trained on windows ``(n, L, F)`` in [0, 1] for ``budget_s`` wall seconds,
    as its train.py does (epochs over the once-shuffled windows, batches of 256 unless ``batch``)."""
    ddpm = mods["ddpm"]
    torch.manual_seed(seed)
    n, L, F = train01.shape
    model = ddpm.TransEncoder(features=F, latent_dim=256, num_heads=8, num_layers=6)
    diffusion = ddpm.GaussianDiffusion1D(model, seq_length=L, timesteps=1000, objective="pred_v", loss_type="l2",
                                         beta_schedule="cosine", sampling_timesteps=steps,
                                         ddim_sampling_eta=0.0)
    optim = torch.optim.Adam(diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
    data = torch.from_numpy(train01[torch.randperm(n).numpy()].transpose(0, 2, 1).copy())  # n F L, as theirs
    diffusion.train()
    t0, step, losses = time.time(), 0, []
    while time.time() - t0 < budget_s:
        for i in range(0, n, batch):
            optim.zero_grad()
            loss = diffusion(data[i: i + batch])
            loss.backward()
            optim.step()
            step += 1
            losses.append(loss.item())
            if time.time() - t0 >= budget_s:
                break
    seconds = time.time() - t0
    params = sum(p.numel() for p in model.parameters())
    info = {"steps": step, "batch": batch, "epochs": step * batch / n, "seconds": seconds, "params": params,
            "final_loss": float(np.mean(losses[-50:])) if losses else float("nan")}
    print(f"official: {step} steps of {batch} ({info['epochs']:.1f} epochs) in {seconds:.0f} s, "
          f"{params / 1e6:.2f} M parameters, loss {info['final_loss']:.4f}", flush=True)
    return diffusion, info


@torch.no_grad()
def sample_official(diffusion, n: int, chunk: int, seed: int) -> tuple[np.ndarray, float]:
    diffusion.eval()
    torch.manual_seed(seed)
    t0, out = time.time(), []
    for i in range(0, n, chunk):
        out.append(diffusion.sample(min(chunk, n - i)).numpy().transpose(0, 2, 1))  # n L F in [0, 1]
    return np.concatenate(out), time.time() - t0


def official_scores(mods: dict, real01: np.ndarray, fake01: np.ndarray, repeats: int,
                    which: tuple[str, ...] = ("lds", "lps")) -> dict:
    """Their long discriminative (transformer, 2000 iterations) and long predictive (transformer,
    5000 iterations) scores (``which``), ``repeats`` times each with seeds 0.., mean and 95%
    half-width. On 2 CPU cores their LDS takes ~7 min a run, their LPS ~18."""
    from fusion_core.engine.stats import mean_ci95

    # their metric code expects tensors (np.take keeps a tensor a tensor; an array breaks index_select)
    real01, fake01 = torch.from_numpy(real01.astype(np.float32)), torch.from_numpy(fake01.astype(np.float32))
    out = {}
    fns = {"lds": mods["long_discriminative_score"].long_discriminative_score_metrics,
           "lps": mods["long_predictive_score"].long_predictive_score_metrics}
    for key, fn in ((f"their_{k}", fns[k]) for k in which):
        runs = []
        for k in range(repeats):
            np.random.seed(k)
            torch.manual_seed(k)
            runs.append(float(fn(real01, fake01)))
        out[key] = mean_ci95(runs)
    return out


def pictures(real: np.ndarray, ours: np.ndarray, theirs: np.ndarray, columns: list[str], out: Path) -> list[Path]:
    """Overlays of real and generated windows, one picture per model (``overlay_ours.png``,
    ``overlay_official.png``)."""
    from fusion_core.recipes.timeseries.plots import overlay

    return [overlay(real, fake, columns, out / f"overlay_{name}.png") for name, fake in (("ours", ours), ("official", theirs))]


def _secs(v) -> str:
    return "n/a" if v is None else f"{v:.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True, help="a copy of fahim-sikder/TransFusion's files")
    ap.add_argument("--preset", default="stocks24")
    ap.add_argument("--ours", type=Path, help="a finished run of the preset (else one is trained in --out)")
    ap.add_argument("--out", type=Path, default=Path("bench_official"))
    ap.add_argument("--budget-s", type=float, help="their training seconds (default: our run's training time)")
    ap.add_argument("--their-steps", type=int, default=50, help="their DDIM sampling steps")
    ap.add_argument("--their-batch", type=int, default=256, help="their training batch (theirs: 256; smaller "
                    "where the machine cannot hold it)")
    ap.add_argument("--official-repeats", type=int, default=1, help="repeats of their own metrics (0: skip)")
    ap.add_argument("--official-metrics", nargs="+", choices=("lds", "lps"), default=["lds", "lps"],
                    help="which of their metrics (their LPS: ~18 min a run on 2 CPU cores)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides for our run and the scoring")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rescore", action="store_true", help="score the samples and timings an earlier run "
                    "left in --out (run_info.json, *_samples.npy) instead of training and sampling again")
    a = ap.parse_args()
    if a.their_batch < 1:
        ap.error(f"--their-batch must be at least 1, got {a.their_batch}")
    if a.threads:
        torch.set_num_threads(a.threads)
    mods = load_official(a.repo.resolve())
    run = a.ours or a.out / "ours"
    if a.ours is None and not a.rescore:
        if fusion(["run", "timeseries", "--preset", a.preset, f"run_dir={run}", "eval.after_train=false",
                   *a.set]) != 0:
            raise SystemExit("our training failed")
    c, model, splits = load_run(run, a.set)
    e, s = c.eval, c.sample
    real, (lo, hi) = held_out(c, splits, e.n, e.seed)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    if a.rescore:
        info = json.loads((a.out / "run_info.json").read_text())
        ours, theirs = np.load(a.out / "ours_samples.npy"), np.load(a.out / "official_samples.npy")
    else:
        ours_s = read_train_time(run).seconds
        t0 = time.time()
        ours = gen.sample(model, MODALITY, e.n, window_shape(c, splits), s.make(model.diffusion[MODALITY]),
                          seed=e.seed, chunk=s.chunk, progress=False).numpy()
        ours_sample_s = time.time() - t0
        diffusion, official = train_official(mods, ((splits.train - lo) / span).astype(np.float32),
                                             a.budget_s or ours_s, c.train.seed, a.their_steps, a.their_batch)
        theirs01, their_sample_s = sample_official(diffusion, e.n, 1000 * a.their_batch // 256, e.seed)
        theirs = theirs01 * span + lo  # user units, as ours
        a.out.mkdir(parents=True, exist_ok=True)
        np.save(a.out / "official_samples.npy", theirs)
        np.save(a.out / "ours_samples.npy", ours)
        info = {"ours_train_s": ours_s, "ours_sample_s": ours_sample_s, "official": official,
                "official_sample_s": their_sample_s, "their_steps": a.their_steps}
        (a.out / "run_info.json").write_text(json.dumps(info, indent=1))

    pictures(real, ours, theirs, splits.columns, a.out)
    table = {}
    for name, fake in (("fusion-core", ours), ("official", theirs)):
        t0 = time.time()
        table[name] = dict(score(real, fake, e, e.seed, (lo, hi)))
        print(f"scored {name} in {time.time() - t0:.0f} s", flush=True)
    floor, floor_kind = real_floor(c, splits, real, e, (lo, hi))
    table["real vs real (floor)"] = {k: (v["mean"], v["ci95"]) for k, v in floor.items()}
    if a.official_repeats:
        real01 = (real - lo) / span
        for name, fake in (("fusion-core", ours), ("official", theirs)):
            table[name].update(official_scores(mods, real01, (fake - lo) / span, a.official_repeats,
                                               tuple(a.official_metrics)))

    names = {**NAMES, "their_lds": "their LDS (official code)", "their_lps": "their LPS (official code)"}
    keys = list(dict.fromkeys(k for v in table.values() for k in v))
    o = info["official"]
    meta = {"fusion-core": f"{info['ours_train_s']:.0f} s train, sample {_secs(info['ours_sample_s'])} "
                           f"({s.sampler} {s.steps})",
            "official": f"{o['seconds']:.0f} s train ({o['steps']} steps of {o.get('batch', 256)}, "
                        f"{o['epochs']:.1f} epochs), "
                        f"sample {_secs(info['official_sample_s'])} (DDIM {info['their_steps']})",
            "real vs real (floor)": floor_kind}
    rows = [{"model": m, "budget": meta[m],
             **{names.get(k, k): (f"{v[k][0]:.4f} ± {v[k][1]:.4f}" if k in v else "") for k in keys}}
            for m, v in table.items()]
    print_table(rows, f"{a.preset}: {len(real)} real windows ({c.eval.against}) vs {e.n} generated, "
                      f"{e.repeats} classifier runs; machine {torch.get_num_threads()} threads")
    ratios = {k: table["fusion-core"][k][0] / table["official"][k][0]
              for k in keys if k in table["official"] and table["official"][k][0] > 0}
    result = {"preset": a.preset, **info,
              "scores": {m: {k: list(v) for k, v in t.items()} for m, t in table.items()},
              "ratios_ours_over_official": ratios, "official_repo": str(a.repo)}
    (a.out / "official_comparison.json").write_text(json.dumps(result, indent=1))
    print_json("official_transfusion", rows, preset=a.preset, ratios=ratios)


if __name__ == "__main__":
    main()
