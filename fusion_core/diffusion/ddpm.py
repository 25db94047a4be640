"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), generalized to respaced steps
(Nichol & Dhariwal 2021, sec. 4): from step t to an earlier visited step s, sample the Gaussian
posterior ``q(x_s | x_t, x0_pred)`` with variance ``(1 - ab_s)/(1 - ab_t) * (1 - ab_t/ab_s)``."""

from __future__ import annotations

from torch import Tensor

from .sampler import Sampler, StepOutput, _noise_like


class DDPMSampler(Sampler):
    def step(self, pred: Tensor, i: int, x_t: Tensor, generator=None) -> StepOutput:
        t, s = int(self.timesteps[i]), self.t_prev(i)
        x0, _ = self.predict_x0_eps(x_t, t, pred)
        if s < 0:
            return StepOutput(x0, x0)
        ac = self.diffusion.alphas_cumprod
        ab_t, ab_s = float(ac[t]), float(ac[s])
        alpha = ab_t / ab_s  # alpha of the merged step s → t
        beta = 1 - alpha
        coef_x0 = ab_s**0.5 * beta / (1 - ab_t)
        coef_xt = alpha**0.5 * (1 - ab_s) / (1 - ab_t)
        var = beta * (1 - ab_s) / (1 - ab_t)
        mean = coef_x0 * x0 + coef_xt * x_t
        return StepOutput(mean + var**0.5 * _noise_like(x_t, generator), x0)
