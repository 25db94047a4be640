"""Data loading for the trainer: each step's micro-batches collated in worker processes.

Batches are a pure function of (seed, step), so a step-indexed map-style dataset over a
``torch.utils.data.DataLoader`` keeps resume exact with no loader state to save: a resumed run
starts the sampler at its step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .model import Batch, FusionModel

if TYPE_CHECKING:
    from .trainer import Trainer


class StepBatches(torch.utils.data.Dataset):
    """Item ``s``: the collated micro-batches of step ``s``, built in a data-loading worker with
    layouts on the CPU and host-side targets counted (the loop then only copies)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def __len__(self) -> int:
        return self.trainer.args.steps

    def __getitem__(self, step: int) -> list[Batch]:
        t = self.trainer
        host = HostCollate(t.model)
        batches = [t.collate(host, ex, seeds) for ex, seeds in t.micro_batches(step)]
        for b in batches:
            t.model.target_counts(b)  # fills the batch's host-side caches
        return batches


class HostCollate:
    """The model as a worker's collate function sees it: ``collate`` builds layouts on the CPU."""

    def __init__(self, model: FusionModel):
        self._model = model

    def collate(self, *args, **kwargs) -> Batch:
        return self._model.collate(*args, device="cpu", **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)
