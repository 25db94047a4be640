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
``k``, at the point itself and none at its neighbours.

Reported per step and caption group (noise level x event kind), in payload units:

- ``taps``: the least-squares filter ``x0_hat - clean ~ sum_j w_j u_(i+j)``, j in -2..2, pooled over
  the group's interior points: ``w_0`` is how much of the point's own noise the model keeps,
  ``w_-1, w_+1`` how much it borrows from the neighbours (a blur). The same regression on the
  optimum's ``x0*`` recovers ``(0, k, 0)`` (the check of the estimator; tests run it on a known
  blur as well);
- ``kept``: variance of ``x0_hat - clean`` over the optimum's (1: the right amount of noise kept);
- ``acf1``: lag-1 autocorrelation of ``x0_hat - clean`` (optimum: ~0, white);
- ``mse / opt``: the model's mean squared error against ``x0`` over the optimum's (>= 1 in
  expectation: the optimum knows the structure, the model must infer it).

    python bench/tts_denoiser.py RUN [--n 600] [--t 2 5 10 20 40 80 160] [--guided]

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
from fusion_core.recipes.text_timeseries import properties as P
from fusion_core.recipes.text_timeseries.sample import load_run
from fusion_core.recipes.text_timeseries.train import MODALITY

HALF = 2  # filter taps each side


class Probe(Sampler):
    """Not a sampler: :meth:`sample` evaluates the denoiser once at each prepared ``x_t`` (one per
    step in ``xt``) and keeps the clean-series estimates in ``x0``; it returns zeros."""

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


def filter_taps(d: np.ndarray, u: np.ndarray, half: int = HALF) -> np.ndarray:
    """Least-squares filter ``d_i ~ sum_j w_j u_(i+j)``, ``j = -half .. half``, pooled over series
    and channels of ``(N, L, F)`` arrays at the points ``half .. L - 1 - half``: ``(2 half + 1,)``."""
    L = d.shape[1]
    cols = [u[:, half + j: L - half + j] for j in range(-half, half + 1)]
    X = np.stack([c.reshape(-1) for c in cols], axis=1)
    y = d[:, half: L - half].reshape(-1)
    return np.linalg.lstsq(X, y, rcond=None)[0]


def lag1(d: np.ndarray) -> float:
    """Lag-1 autocorrelation of ``(N, L, F)`` residuals, each series centred, pooled."""
    d = d - d.mean(axis=1, keepdims=True)
    return float((d[:, 1:] * d[:, :-1]).mean() / (d * d).mean())


def optimum(clean: np.ndarray, u: np.ndarray, sigma: np.ndarray, r: float) -> np.ndarray:
    """The Bayes estimate ``clean + k u`` for white noise of level ``sigma`` ``(N,)`` around a known
    ``clean`` when the observation is ``u = n + r eps`` beside it."""
    k = sigma ** 2 / (sigma ** 2 + r ** 2)
    return clean + k[:, None, None] * u


def measures(x0_hat, x0, clean, u, sigma, r) -> dict:
    """The module docstring's measures of one group at one step."""
    best = optimum(clean, u, sigma, r)
    d, d_opt = x0_hat - clean, best - clean
    w, w_opt = filter_taps(d, u), filter_taps(d_opt, u)
    row = {f"w{j:+d}": float(w[j + HALF]) for j in (-1, 0, 1)}
    row.update({"k (opt w0)": float(w_opt[HALF]), "opt w+-1": float(max(abs(w_opt[HALF - 1]), abs(w_opt[HALF + 1]))),
                "kept": float(d.var() / d_opt.var()), "acf1": lag1(d), "opt acf1": lag1(d_opt),
                "mse / opt": float(((x0_hat - x0) ** 2).mean() / ((best - x0) ** 2).mean())})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=600, help="series (seen combinations)")
    ap.add_argument("--t", type=int, nargs="+", default=[2, 5, 10, 20, 40, 80, 160])
    ap.add_argument("--guided", action="store_true", help="also with the run's guidance")
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--seed", type=int, default=123)
    a = ap.parse_args()
    c, model = load_run(a.run, ["eval.progress=false"])
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
    rows = []
    for name, guidance in variants:
        est = {t: [] for t in a.t}
        for i in range(0, a.n, a.chunk):
            sl = slice(i, i + a.chunk)
            xt = {}
            for t in a.t:
                tt = torch.full((len(x0[sl]),), t, dtype=torch.long)
                xt[t] = diffusion.q_sample(x0[sl], tt, eps[sl])
            probe = Probe(diffusion, xt)
            gen.generate_span(model, captions[sl], MODALITY, tuple(x0.shape[1:]), probe, guidance, decode=False)
            for t in a.t:
                est[t].append(probe.x0[t])
        for t in a.t:
            al, s = (float(v) for v in diffusion.alpha_sigma(torch.tensor([t]), torch.zeros(1)))
            r = s / al
            x0_hat = torch.cat(est[t]).double().numpy()
            u = ((diffusion.q_sample(x0, torch.full((a.n,), t), eps) / al) - c0).double().numpy()
            for gname, m in groups.items():
                if m.sum() < 4:
                    continue
                rows.append({"variant": name, "t": t, "s/a": r, "group": gname, "n": int(m.sum()),
                             "sigma": float(np.median(sigma[m])),
                             **measures(x0_hat[m], x0.double().numpy()[m], c0.double().numpy()[m], u[m], sigma[m], r)})
            print(rows[-1], flush=True)
    print_table(rows, f"{a.n} synthetic series of {a.run}'s seen combinations: the denoiser's clean-series "
                "estimate against the pointwise optimum")
    print_json("tts_denoiser", rows, run=str(a.run))


if __name__ == "__main__":
    main()
