"""The batch types a :class:`~fusion_core.model.FusionModel` trains on: :class:`Item` (one encoded
segment of an example), :class:`Batch` (encoded examples and their layout) and
:class:`LossOutput` (what the loss returns).

Shapes: B rows, L positions, N positions of one modality.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .layout import SequenceLayout, cat_to_device, to_device


@dataclass
class Item:
    """One segment of a training or prompt example, already encoded by its adapter.

    Attributes:
        modality: adapter name.
        payload: the adapter's payload (token ids, scaled image, scaled window).
        max_t: for continuous items, the largest diffusion step to sample (noise limiting).
    """

    modality: str
    payload: Tensor
    max_t: int | None = None


@dataclass
class Batch:
    """Encoded examples and their layout. ``seeds`` (one per example), when set, key every random
    draw of the loss (each span's step and noise) to its example, so the draws do not depend on
    batch composition, micro-batching or the number of processes."""

    examples: list[list[Item]]
    layout: SequenceLayout
    seeds: list[int] | None = None
    _derived: dict = field(default_factory=dict, repr=False, compare=False)  # per-batch caches

    def pin_memory(self) -> "Batch":
        """Payloads in pinned host memory, for non-blocking copies (``DataLoader(pin_memory=True)``)."""
        pinned = [[Item(it.modality, it.payload.pin_memory(), it.max_t) for it in ex] for ex in self.examples]
        keep = {k: v for k, v in self._derived.items() if k in ("lm_targets", "lm_counts")}  # host-only caches
        return Batch(pinned, self.layout, self.seeds, keep)

    def to(self, device) -> "Batch":
        """The layout on ``device`` (one copy; payloads move when the loss uses them). Host-side
        caches (targets, counts) carry over: they describe the same batch."""
        keep = {k: v for k, v in self._derived.items() if k in ("payloads", "lm_targets", "lm_counts")}
        return Batch(self.examples, self.layout.to(device), self.seeds, keep)


def move_tensors(tensors: list[Tensor], device: torch.device) -> list[Tensor]:
    """Tensors to ``device``, host ones of a common dtype in one copy (no GPU sync)."""
    host = [t for t in tensors if t.device.type == "cpu"]
    if device.type == "cpu" or not host:
        return [t.to(device) for t in tensors]
    if len({t.dtype for t in host}) > 1:
        return [to_device(t, device) for t in tensors]
    moved = iter(cat_to_device(host, device))
    return [next(moved) if t.device.type == "cpu" else t.to(device) for t in tensors]


@dataclass
class LossOutput:
    """``loss`` is the weighted total; ``parts`` the unweighted per-modality means (CE for
    discrete, MSE for continuous); ``counts`` how many targets (tokens) or spans each averaged;
    ``timesteps`` the diffusion step of every continuous span."""

    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    timesteps: dict[str, Tensor] = field(default_factory=dict)  # per continuous span


