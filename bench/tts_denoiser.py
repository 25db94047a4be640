"""How a trained text_timeseries denoiser treats a series' fine noise (#28), against the Bayes
optimum in closed form.

Generated low-noise series carry a residual that is too quiet and correlated (lag-1
autocorrelation ~0.3 against real ~-0.07; ``bench/tts_shift_profile.py``). This asks the model
directly, one denoising call per step, where that comes from. Synthetic series of the run's seen
combinations are drawn twice from one seed, with and without their noise (the recipe's generator,
``noise=False``), so the noise ``n = x0 - clean`` of each is known exactly. At each step ``t`` in
``--t`` the model gets ``x_t = a_t x0 + s_t eps`` and the caption and returns its clean-series
estimate ``x0_hat``. For white noise of level ``sigma`` around a known structure the optimal
estimate is pointwise shrinkage of ``u = x_t / a_t - clean = n + (s_t / a_t) eps``:
``x0* = clean + k u``, ``k = sigma^2 / (sigma^2 + (s_t / a_t)^2)`` — a filter with one tap,
``k``, at the point itself and none at its neighbours. The model does not know the structure; the
estimate it can reach is the second reference, ``fit``: the caption's model (trend, cycle, event;
the fidelity measure's least-squares fit) fitted to ``y = x_t / a_t`` and the rest shrunk by ``k``,
``x0_fit = s_hat + k (y - s_hat)`` — the exact posterior mean under a flat prior on the model's
coefficients where the caption fixes the design (no event), close to it elsewhere. Its filter is
``k`` at the point plus ``(1 - k)`` times the fit's hat matrix: a little of every neighbour.

Reported per step and caption group (noise level x event kind), in payload units:

- ``w-1, w+0, w+1``: the least-squares filter ``x0_hat - clean ~ sum_j w_j u_(i+j)``, j in -2..2,
  pooled over the group's interior points: ``w+0`` is how much of the point's own noise the model
  keeps, ``w-1, w+1`` how much it borrows from the neighbours (a blur); ``fit w0``, ``fit w+-1``
  the same read off the fit reference, ``k`` the optimum's; ``w+-1 in patch`` / ``across``: the
  neighbour taps where the neighbour shares the point's patch and where it does not (a model
  that blurs inside its patches only: its output layer) (the regression recovers ``(0, k, 0)``
  from it exactly: the estimator's check; tests run it on a known blur as well);
- ``kept / fit``: variance of ``x0_hat - clean`` over the fit reference's (1: as much left in as
  the reachable estimate leaves);
- ``acf1``, ``fit acf1``: lag-1 autocorrelation of ``x0_hat - clean`` and of the reference's;
- ``mse / fit``, ``mse / opt``: the model's mean squared error against ``x0`` over each
  reference's (``/ opt`` >= 1 in expectation: the optimum knows the structure).

    python bench/tts_denoiser.py RUN [--n 600] [--t 2 5 10 20 40 80 160] [--guided] [--set sample.use_ema=false]

``--guided`` adds the run's guidance (``eval.sample.guidance*``) as the sampler uses it. Basic
family only (its noise is white; the wide family's AR(1) noise has no pointwise optimum). Prints a
table and a JSON line.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch

from common import print_json, print_table
from fusion_core import generation as gen
from fusion_core.diffusion.sampler import Sampler
from fusion_core.recipes.text_timeseries import captions as C
from fusion_core.recipes.text_timeseries import fidelity as FI
from fusion_core.recipes.text_timeseries import properties as P
from fusion_core.recipes.text_timeseries.sample import load_run
from fusion_core.recipes.text_timeseries.train import MODALITY

HALF = 2  # filter taps each side


class Probe(Sampler):
    """Not a sampler: :meth:`sample` evaluates the denoiser once at each prepared ``x_t`` (one per
    step in ``xt``) and keeps the clean-series estimates in ``x0``; it returns zeros. A
    :class:`Sampler` so that ``generate_span`` takes it — prefill of the captions, guidance and all —
    and hands it the denoiser; it never steps (``step`` refuses, by design)."""

    def __init__(self, diffusion, xt: dict[int, torch.Tensor]):
        super().__init__(diffusion, steps=1)
        self.xt, self.x0 = xt, {}

    def step(self, pred, i, x_t, generator=None):
        raise NotImplementedError("Probe evaluates the denoiser; it does not step")

    @torch.no_grad()
    def sample(self, denoise, shape=None, x_T=None, generator=None, device=None, dtype=torch.float32,
               progress=False, callback=None):
        for t, x in self.xt.items():
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
            pred = denoise(x.to(device), tt).float().cpu()
            self.x0[t] = self.diffusion.to_x0_eps(x, tt.cpu(), pred)[0]
        return torch.zeros(shape)


def filter_taps(d: np.ndarray, u: np.ndarray, half: int = HALF, where: np.ndarray | None = None) -> np.ndarray:
    """Least-squares filter ``d_i ~ sum_j w_j u_(i+j)``, ``j = -half .. half``, pooled over series
    and channels of ``(N, L, F)`` arrays at the points ``half .. L - 1 - half`` (those of them
    where the ``(L,)`` mask ``where`` holds): ``(2 half + 1,)``."""
    L = d.shape[1]
    keep = np.ones(L - 2 * half, bool) if where is None else np.asarray(where)[half: L - half]
    cols = [u[:, half + j: L - half + j][:, keep] for j in range(-half, half + 1)]
    X = np.stack([c.reshape(-1) for c in cols], axis=1)
    y = d[:, half: L - half][:, keep].reshape(-1)
    return np.linalg.lstsq(X, y, rcond=None)[0]


def neighbour_taps(d: np.ndarray, u: np.ndarray, patch: int) -> tuple[float, float]:
    """The mean tap on a neighbour inside the point's patch of ``patch`` steps and on one across a
    patch border (the filter fitted separately at each position in the patch)."""
    pos = np.arange(d.shape[1]) % patch
    inside, across = [], []
    for j in range(patch):
        w = filter_taps(d, u, where=pos == j)
        (inside if j > 0 else across).append(w[HALF - 1])  # the step before
        (inside if j < patch - 1 else across).append(w[HALF + 1])  # the step after
    return float(np.mean(inside)), float(np.mean(across))


def lag1(d: np.ndarray) -> float:
    """Lag-1 autocorrelation of ``(N, L, F)`` residuals, each series centred, pooled."""
    d = d - d.mean(axis=1, keepdims=True)
    return float((d[:, 1:] * d[:, :-1]).mean() / (d * d).mean())


def optimum(clean: np.ndarray, u: np.ndarray, sigma: np.ndarray, r: float) -> np.ndarray:
    """The Bayes estimate ``clean + k u`` for white noise of level ``sigma`` ``(N,)`` around a known
    ``clean`` when the observation is ``u = n + r eps`` beside it."""
    k = sigma ** 2 / (sigma ** 2 + r ** 2)
    return clean + k[:, None, None] * u


def fitted(y: np.ndarray, props, sigma: np.ndarray, r: float) -> np.ndarray:
    """The fit reference: each series ``y = x_t / a_t`` ``(N, L, F)`` fitted by its caption's
    model (:func:`fidelity.measure`'s least squares), the residual shrunk by ``k``."""
    resid = FI.measure(y, props).resid
    k = sigma ** 2 / (sigma ** 2 + r ** 2)
    return y - (1 - k[:, None, None]) * resid


def measures(x0_hat, x0, clean, u, sigma, r, fit=None, patch: int = 1) -> dict:
    """The module docstring's measures of one group at one step (``fit``: the fit reference's
    estimate; left out where not given; ``patch`` > 1: the neighbour taps inside the model's
    patches and across their borders)."""
    best = optimum(clean, u, sigma, r)
    d, d_opt = x0_hat - clean, best - clean
    w = filter_taps(d, u)
    row = {f"w{j:+d}": float(w[j + HALF]) for j in (-1, 0, 1)}
    if patch > 1:
        row["w+-1 in patch"], row["w+-1 across"] = neighbour_taps(d, u, patch)
    row["k"] = float(filter_taps(d_opt, u)[HALF])
    mse = float(((x0_hat - x0) ** 2).mean())
    if fit is not None:
        d_fit = fit - clean
        w_fit = filter_taps(d_fit, u)
        row.update({"fit w0": float(w_fit[HALF]), "fit w+-1": float((w_fit[HALF - 1] + w_fit[HALF + 1]) / 2),
                    "kept / fit": float(d.var() / d_fit.var())})
    row["acf1"] = lag1(d)
    if fit is not None:
        row.update({"fit acf1": lag1(d_fit), "mse / fit": mse / float(((fit - x0) ** 2).mean())})
    row["mse / opt"] = mse / float(((best - x0) ** 2).mean())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=600, help="series (seen combinations)")
    ap.add_argument("--t", type=int, nargs="+", default=[2, 5, 10, 20, 40, 80, 160])
    ap.add_argument("--guided", action="store_true", help="also with the run's guidance")
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--set", nargs="*", default=[], help="overrides for loading the model, e.g. sample.use_ema=false")
    a = ap.parse_args()
    c, model = load_run(a.run, ["eval.progress=false", *a.set])
    if c.data.family != "basic" or c.data.source != "synthetic":
        raise SystemExit(f"{a.run}: data.family={c.data.family}, data.source={c.data.source}: the probe needs "
                         "synthetic series of the basic family (white noise)")
    d = c.data
    held = set(P.held_out_combinations(d.held_out_combinations, d.combination_seed))
    seen = [p for p in P.ALL_COMBINATIONS if p not in held]
    noisy = P.draw(a.n, seen, d.length, d.features, a.seed, d.family)
    clean = P.draw(a.n, seen, d.length, d.features, a.seed, d.family, noise=False).values
    props = noisy.properties
    rng = random.Random(a.seed)
    captions = [C.describe(p, rng) for p in props]
    adapter = model.adapters[MODALITY]
    enc = lambda v: torch.stack([adapter.encode(s) for s in torch.as_tensor(v)]).float()  # noqa: E731
    x0, c0 = enc(noisy.values), enc(clean)
    sigma = (x0 - c0).double().std(dim=(1, 2)).numpy()  # each series' noise level in payload units
    diffusion = model.diffusion[MODALITY]
    g = torch.Generator().manual_seed(a.seed)
    eps = torch.randn(x0.shape, generator=g)
    groups = {f"{lvl} noise, {ev}": np.array([p.noise == lvl and p.event_kind == ev for p in props])
              for lvl in ("low", "high") for ev in ("none", "spike", "shift")}
    variants = [("conditional", None)] + ([("guided", c.eval.sample.guidance_args)] if a.guided else [])
    xt = {t: diffusion.q_sample(x0, torch.full((a.n,), t), eps) for t in a.t}  # every variant sees these
    clean, truth = c0.double().numpy(), x0.double().numpy()
    refs = {}  # t -> (s_t / a_t, y = x_t / a_t, the fit reference)
    for t in a.t:
        al, s = (float(v) for v in diffusion.alpha_sigma(torch.tensor([t]), torch.zeros(1)))
        y = (xt[t] / al).double().numpy()
        refs[t] = (s / al, y, fitted(y, props, sigma, s / al))
    rows = []
    for name, guidance in variants:
        est = {t: [] for t in a.t}
        for i in range(0, a.n, a.chunk):
            sl = slice(i, i + a.chunk)
            probe = Probe(diffusion, {t: x[sl] for t, x in xt.items()})
            gen.generate_span(model, captions[sl], MODALITY, tuple(x0.shape[1:]), probe, guidance, decode=False)
            for t in a.t:
                est[t].append(probe.x0[t])
        for t in a.t:
            r, y, fit = refs[t]
            x0_hat = torch.cat(est[t]).double().numpy()
            for gname, m in groups.items():
                if m.sum() < 4:
                    continue
                rows.append({"variant": name, "t": t, "s/a": r, "group": gname, "n": int(m.sum()),
                             "sigma": float(np.median(sigma[m])),
                             **measures(x0_hat[m], truth[m], clean[m], y[m] - clean[m], sigma[m], r, fit[m],
                                      c.model.patch)})
            print(rows[-1], flush=True)
    print_table(rows, f"{a.n} synthetic series of {a.run}'s seen combinations: the denoiser's clean-series "
                "estimate against the pointwise optimum")
    print_json("tts_denoiser", rows, run=str(a.run))


if __name__ == "__main__":
    main()
