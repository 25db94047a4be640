"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the
diffusion ODE in data-prediction form, with ``lambda = log(a/s)`` and ``h = lambda_s - lambda_t``:

    x_s = (s_s / s_t) x_t - a_s (exp(-h) - 1) D,   D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev,

``r = h_prev / h``; the first step and the last (to clean data) are first order. Good samples in
10–25 model evaluations with steps evenly spaced in log-SNR (the default here).
"""

from __future__ import annotations

import math

from torch import Tensor

from .sampler import Sampler, StepOutput


class DPMSolverSampler(Sampler):
    default_spacing = "logsnr"
    multistep = True

    def reset(self) -> None:
        self._prev_x0: Tensor | None = None
        self._prev_h: float | None = None

    def _lambda(self, t: int) -> tuple[float, float, float]:
        ab = float(self.diffusion.alphas_cumprod[t])
        a, s = math.sqrt(ab), math.sqrt(1 - ab)
        return a, s, math.log(a / s)

    def step(self, pred: Tensor, i: int, x_t: Tensor, generator=None) -> StepOutput:
        t, s = int(self.timesteps[i]), self.t_prev(i)
        x0, _ = self.predict_x0_eps(x_t, t, pred)
        if s < 0:
            return StepOutput(x0, x0)
        _, s_t, lam_t = self._lambda(t)
        a_s, s_s, lam_s = self._lambda(s)
        h = lam_s - lam_t
        D = x0
        if self._prev_x0 is not None:
            r = self._prev_h / h
            D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * self._prev_x0
        x = (s_s / s_t) * x_t - a_s * math.expm1(-h) * D
        self._prev_x0, self._prev_h = x0, h
        return StepOutput(x, x0)
