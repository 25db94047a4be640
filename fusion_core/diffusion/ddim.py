"""DDIM (Song et al. 2021, eq. 12): ``x_s = a_s x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z`` with
``sigma = eta * sqrt((1 - ab_s)/(1 - ab_t)) * sqrt(1 - ab_t/ab_s)``. ``eta = 0`` is deterministic
(and invertible, :meth:`DDIMSampler.invert`); ``eta = 1`` matches DDPM's variance."""

from __future__ import annotations

import torch
from torch import Tensor

from .gaussian import Denoiser
from .sampler import Sampler, StepOutput, _noise_like


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021): deterministic at ``eta = 0``, DDPM-like at ``eta = 1``.

    Args:
        diffusion, steps, spacing, clip_x0: see :class:`~fusion_core.diffusion.Sampler`.
        eta: the noise kept at each step (0 = deterministic).

    Raises:
        ValueError: ``eta < 0``, or what :class:`~fusion_core.diffusion.Sampler` raises.
    """

    default_spacing = "linspace"

    def __init__(self, diffusion, steps=None, spacing=None, clip_x0=None, eta: float = 0.0):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = eta
        super().__init__(diffusion, steps, spacing, clip_x0)

    def step(self, pred: Tensor, i: int, x_t: Tensor, generator=None) -> StepOutput:
        t, s = int(self.timesteps[i]), self.t_prev(i)
        x0, eps = self.predict_x0_eps(x_t, t, pred)
        if s < 0:
            return StepOutput(x0, x0)
        ac = self.diffusion.alphas_cumprod
        ab_t, ab_s = float(ac[t]), float(ac[s])
        sigma = self.eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)) ** 0.5
        x = ab_s**0.5 * x0 + max(1 - ab_s - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * _noise_like(x_t, generator)
        return StepOutput(x, x0)

    @torch.no_grad()
    def invert(self, denoise: Denoiser, x0: Tensor) -> Tensor:
        """Deterministic DDIM inversion: the eta = 0 update run from data up to ``x_T`` over the
        same steps, each step using the prediction made at its less noisy end. The first step
        starts at clean data, where x0 is known exactly and eps is predicted at ``a_t0 * x0``."""
        ac = self.diffusion.alphas_cumprod
        x, prev = x0, None
        for t in self.timesteps.flip(0).tolist():  # ascending
            a_t, s_t = ac[t].sqrt().item(), (1 - ac[t]).sqrt().item()
            if prev is None:
                x_in, t_in = a_t * x, t
            else:
                x_in, t_in = x, prev
            tt = torch.full((x.shape[0],), t_in, dtype=torch.long, device=x.device)
            x0_hat, eps = self.predict_x0_eps(x_in, t_in, denoise(x_in, tt))
            if prev is None:
                x0_hat = x
            x, prev = a_t * x0_hat + s_t * eps, t
        return x
