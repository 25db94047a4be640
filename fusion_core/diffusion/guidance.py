"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper of a denoiser.

``guided = uncond + scale * (cond - uncond)``; ``scale = 1`` is the conditional model alone.
Transfusion samples with scale 5 (vs Chameleon) and 3 (ablations). The wrapped callable returns both
predictions, so a model can compute them in one batched pass.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from .gaussian import Denoiser


def classifier_free_guidance(denoise_pair: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
                             scale: float) -> Denoiser:
    """Wrap ``denoise_pair(x_t, t) -> (cond_pred, uncond_pred)`` into a guided denoiser.

    Guidance is linear in the prediction, so it means the same in eps, x0 or v space for a
    given ``x_t``.
    """

    def guided(x_t: Tensor, t: Tensor) -> Tensor:
        cond, uncond = denoise_pair(x_t, t)
        return uncond + scale * (cond - uncond)

    return guided


def batched_pair(denoise_both: Denoiser) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Turn a denoiser over a doubled batch (first half conditional, second half unconditional)
    into the ``denoise_pair`` that :func:`classifier_free_guidance` wraps: one forward pass."""

    def pair(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        import torch

        out = denoise_both(torch.cat([x_t, x_t]), torch.cat([t, t]))
        return out.chunk(2)

    return pair
