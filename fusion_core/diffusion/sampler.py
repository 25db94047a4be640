"""The sampler interface every sampling algorithm implements, and the loop that drives it.

As in diffusers, ``step()`` maps the model's prediction at ``x_t`` to ``(x_prev, x0_pred)``; the loop
in :meth:`Sampler.sample` calls a ``denoise(x_t, t)`` callable (any model, guided or not) between
steps. Recipes that need to intervene between steps (inpainting, mode-switching generation) call
``step()`` themselves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .gaussian import Denoiser, GaussianDiffusion
from .respacing import respace


@dataclass
class StepOutput:
    prev_sample: Tensor  # x at the next (less noisy) visited step
    pred_x0: Tensor  # the clean-data prediction made at this step


class Sampler(ABC):
    """Base class. Subclasses implement :meth:`step` (and :meth:`reset` if they keep state).

    Args:
        diffusion: the process (schedule and prediction type) the model was trained with.
        steps: how many model evaluations; ``None`` = all ``T``.
        spacing: how to choose the visited steps (:func:`.respacing.respace`); default is the
            class's ``default_spacing``. ODE solvers visit ``t = 0`` last ("linspace"): jumping to
            clean data from a noisier step collapses the variance of narrow distributions.
        clip_x0: clamp predicted x0 to ``[-clip_x0, clip_x0]`` (TransFusion clips to [-1, 1]).

    Raises:
        ValueError: ``steps`` outside ``[1, T]`` or an unknown ``spacing``.
    """

    default_spacing = "trailing"
    multistep = False  # keeps earlier steps' predictions: a step cannot be redone (no resampling)

    def __init__(self, diffusion: GaussianDiffusion, steps: int | None = None,
                 spacing: str | None = None, clip_x0: float | None = None):
        self.diffusion = diffusion
        self.spacing = spacing or self.default_spacing
        self.timesteps = torch.from_numpy(
            respace(diffusion.T, steps, self.spacing, diffusion.alphas_cumprod.numpy()))
        self.clip_x0 = clip_x0
        self.reset()

    def reset(self) -> None:
        """Forget state kept between steps (multistep solvers)."""

    def __len__(self) -> int:
        return len(self.timesteps)

    def t_prev(self, i: int) -> int:
        """The step visited after step ``i`` (-1 = clean data)."""
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def predict_x0_eps(self, x_t: Tensor, t: int, pred: Tensor) -> tuple[Tensor, Tensor]:
        """Model output → ``(x0, eps)``, with x0 clipping applied consistently to both."""
        tt = torch.full((x_t.shape[0],), t, dtype=torch.long)
        x0, eps = self.diffusion.to_x0_eps(x_t, tt, pred)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            eps = self.diffusion.convert(x_t, tt, x0, "eps", prediction="x0")
        return x0, eps

    @abstractmethod
    def step(self, pred: Tensor, i: int, x_t: Tensor, generator=None) -> StepOutput:
        """Map the model's prediction at ``x_t`` (visited step ``i``) to the next visited step."""

    @torch.no_grad()
    def sample(self, denoise: Denoiser, shape=None, x_T: Tensor | None = None, generator=None,
               device=None, dtype=torch.float32, progress: bool = False,
               callback: Callable[[int, StepOutput], None] | None = None) -> Tensor:
        """Run the reverse process from pure noise (or ``x_T``) to data.

        Args:
            denoise: ``denoise(x_t, t) -> prediction`` in ``diffusion.prediction`` space.
            shape: ``(B, ...)`` of the samples, when ``x_T`` is not given.
            generator: a ``torch.Generator`` for reproducible noise, or a list of one per row
                (each row's noise then depends on its generator alone, not on the batch).
            progress: show a tqdm bar.
            callback: called as ``callback(i, output)`` after each step.
        """
        if x_T is None:
            if shape is None:
                raise ValueError("sample() needs shape or x_T")
            x_T = randn(tuple(shape), generator, device, dtype)
        self.reset()
        x = x_T
        for i in tqdm(range(len(self)), disable=not progress, desc=type(self).__name__, leave=False):
            t = torch.full((x.shape[0],), int(self.timesteps[i]), dtype=torch.long, device=x.device)
            out = self.step(denoise(x, t), i, x, generator=generator)
            if callback is not None:
                callback(i, out)
            x = out.prev_sample
        return x


def randn(shape: tuple, generator, device=None, dtype=torch.float32) -> Tensor:
    """Standard normal noise of ``shape`` ``(B, ...)``: from one generator, or row by row from a
    list of ``B`` generators (each drawn on its own device, moved to ``device``)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for {shape[0]} rows: give one per row")
        rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.stack(rows).to(device) if rows else torch.zeros(shape, device=device, dtype=dtype)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def _noise_like(x: Tensor, generator) -> Tensor:
    return randn(tuple(x.shape), generator, x.device, x.dtype)
