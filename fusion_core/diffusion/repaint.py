"""Conditional sampling by replacement with resampling (RePaint, Lugmayr et al. 2022), for
imputation, forecasting and inpainting with a model trained unconditionally.

At each reverse step the observed entries are replaced by the observed values noised to the
step's level, so the unobserved ones are drawn consistent with them; with ``resample > 1`` each
step is redone after re-noising back to its level (RePaint's "jumps" of length 1). Observed
entries come out exactly.

Replacement alone ties the unobserved part only loosely to the observed one: with an exact
denoiser for Gaussian data the first forecast step scatters twice as widely as the true
conditional. Resampling is what makes it agree (the test suite checks this against the exact
conditional of Gaussian data; docs/results.md has the measurements). It redoes steps, so it needs
a one-step sampler (DDPM or DDIM), not a multistep solver.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gaussian import Denoiser
from .sampler import Sampler


def check_resample(sampler: Sampler, resample: int) -> None:
    """Resampling redoes steps: it needs ``resample >= 1`` and a one-step sampler.

    Raises:
        ValueError: otherwise, naming the sampler.
    """
    if not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample must be an int >= 1, got {resample!r}")
    if resample > 1 and sampler.multistep:
        raise ValueError(f"resample={resample} needs a one-step sampler (ddpm or ddim): "
                         f"{type(sampler).__name__} keeps earlier steps and cannot redo one")


@torch.no_grad()
def repaint(denoise: Denoiser, sampler: Sampler, observed: Tensor, mask: Tensor, resample: int = 1,
            generator: torch.Generator | None = None) -> Tensor:
    """Fill the entries of ``observed`` ``(B, ...)`` where ``mask`` (same shape, True = observed)
    is False, drawing them from the model consistent with the observed ones.

    Args:
        denoise: ``denoise(x_t, t) -> prediction`` of the sampler's diffusion process.
        sampler: a one-step sampler when ``resample > 1``.
        observed: payloads with the known values (anything where unobserved).
        mask: bool, True where observed.
        resample: how many times each step is drawn (1 = replacement only).
        generator: a CPU generator for every random draw (reproducible on any device).

    Returns:
        ``(B, ...)`` on ``observed``'s device, equal to ``observed`` wherever ``mask`` is True.
    """
    if observed.shape != mask.shape:
        raise ValueError(f"observed {tuple(observed.shape)} and mask {tuple(mask.shape)} differ in shape")
    check_resample(sampler, resample)
    diff = sampler.diffusion
    device = observed.device
    obs, m = observed.float(), mask.to(device).bool()

    def noise() -> Tensor:
        return torch.randn(obs.shape, generator=generator).to(device)

    x = noise()
    sampler.reset()
    ac = diff.alphas_cumprod
    B = obs.shape[0]
    for i in range(len(sampler)):
        t, s = int(sampler.timesteps[i]), sampler.t_prev(i)
        for r in range(resample):
            tt = torch.full((B,), t, dtype=torch.long, device=device)
            x_prev = sampler.step(denoise(x, tt), i, x, generator=generator).prev_sample
            known = diff.q_sample(obs, torch.full((B,), s, dtype=torch.long), noise()) if s >= 0 else obs
            x_prev = torch.where(m, known, x_prev)
            if r < resample - 1 and s >= 0:  # jump back to level t and redo the step
                a = float(ac[t] / ac[s])
                x = a**0.5 * x_prev + (1 - a) ** 0.5 * noise()
            else:
                x = x_prev
    return torch.where(m, obs, x)
