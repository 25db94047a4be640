"""Data loading for the trainer: each step's micro-batches collated in worker processes.

Batches are a pure function of (seed, step), so a step-indexed map-style dataset over a
``torch.utils.data.DataLoader`` keeps resume exact with no loader state to save: a resumed run
starts the sampler at its step.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..model import Batch, FusionModel

Collate = Callable[[FusionModel, list, list[int]], Batch]
MicroBatches = Callable[[int], list[tuple[list, list[int]]]]  # step -> [(examples, seeds)] of this process


class StepBatches(torch.utils.data.Dataset):
    """Item ``s``: the collated micro-batches of step ``s``, built in a data-loading worker with
    layouts on the CPU and host-side targets counted (the loop then only copies).

    Args:
        model: the model being trained (collation reads its mode and adapters).
        collate: ``collate(model, examples, seeds) -> Batch``.
        micro_batches: ``micro_batches(step)`` → this process's ``(examples, seeds)`` of the step.
        steps: how many steps there are.
    """

    def __init__(self, model: FusionModel, collate: Collate, micro_batches: MicroBatches, steps: int):
        self.model, self.collate, self.micro_batches, self.steps = model, collate, micro_batches, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> list[Batch]:
        host = HostCollate(self.model)
        batches = [self.collate(host, ex, seeds) for ex, seeds in self.micro_batches(step)]
        for b in batches:
            self.model.target_counts(b)  # fills the batch's host-side caches
        return batches


class HostCollate:
    """The model as a worker's collate function sees it: ``collate`` builds layouts on the CPU."""

    def __init__(self, model: FusionModel):
        self._model = model

    def collate(self, *args, **kwargs) -> Batch:
        return self._model.collate(*args, device="cpu", **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)
