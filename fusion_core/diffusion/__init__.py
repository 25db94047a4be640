"""Diffusion math, model-agnostic: schedules, the Gaussian process, samplers and guidance.

Nothing here imports a model; samplers take any ``denoise(x_t, t) -> prediction`` callable.
"""

from .ddim import DDIMSampler
from .ddpm import DDPMSampler
from .dpm_solver import DPMSolverSampler
from .gaussian import PREDICTIONS, T_SAMPLINGS, WEIGHTINGS, Denoiser, GaussianDiffusion
from .guidance import Guidance, batched_pair, classifier_free_guidance
from .respacing import respace
from .sampler import Sampler, StepOutput
from .schedules import SCHEDULES, make_schedule

SAMPLERS = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "dpm_solver": DPMSolverSampler}


def make_sampler(name: str, diffusion: GaussianDiffusion, steps: int | None = None, **kwargs) -> Sampler:
    """A sampler by name: ``ddpm`` (ancestral), ``ddim`` (``eta=...``), ``dpm_solver`` (++2M).

    Raises:
        ValueError: an unknown name, or what the sampler's constructor raises.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {sorted(SAMPLERS)}")
    return SAMPLERS[name](diffusion, steps, **kwargs)


__all__ = [
    "DDIMSampler", "DDPMSampler", "DPMSolverSampler", "Denoiser", "GaussianDiffusion", "Guidance",
    "PREDICTIONS", "SAMPLERS", "SCHEDULES", "Sampler", "StepOutput", "T_SAMPLINGS", "WEIGHTINGS",
    "batched_pair", "classifier_free_guidance", "make_sampler", "make_schedule", "respace",
]
