"""Exponential moving average of a model's weights (what diffusion models sample with), with a
warm-up: the decay of update ``n`` is ``min(decay, (1 + n) / (10 + n))`` (diffusers' EMA), so
early on the average follows the weights and the random initialisation washes out at once —
without it a share ``decay**n`` of the initial weights stays in (13.5% after 2000 updates at
0.999), and samples drawn with the EMA are worse than the raw weights' on short runs."""

from __future__ import annotations

import torch
from torch import nn


def warmup_decay(decay: float, n: int, warmup: bool = True) -> float:
    """The decay of update ``n`` (counting from 0): ``min(decay, (1 + n) / (10 + n))`` with the
    warm-up, else ``decay``."""
    return min(decay, (1 + n) / (10 + n)) if warmup else decay


class EMA:
    """Exponential moving average of a model's floating-point state (used for sampling).

    Args:
        model: the model whose weights are averaged (its current weights start the average).
        decay: the decay after the warm-up (0.999, 0.9999, ...).
        warmup: ramp the decay up with the number of updates (see the module docstring).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.num_updates = 0  # the trainer sets it on resume (it equals the step)
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()
                       if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward ``model``'s weights by ``1 - decay`` of the current update."""
        d = warmup_decay(self.decay, self.num_updates, self.warmup)
        self.num_updates += 1
        state = model.state_dict()
        keys = [k for k in self.shadow if k in state]
        new = [state[k].float() for k in keys]
        if any(hasattr(v, "full_tensor") for v in new):  # FSDP shards: one at a time
            for k, v in zip(keys, new):
                self.shadow[k].lerp_(v, 1 - d)
        else:  # a few kernels for the whole model instead of one per tensor
            torch._foreach_lerp_([self.shadow[k] for k in keys], new, 1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full CPU tensors (DTensor shards are gathered; collective under FSDP)."""
        full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in self.shadow.items()}
        return {k: v.cpu().contiguous() for k, v in full.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Full tensors in; under FSDP each process keeps its shard of them."""
        for k, v in state.items():
            cur = self.shadow[k]
            if hasattr(cur, "device_mesh"):  # a DTensor shard
                from torch.distributed.tensor import distribute_tensor

                v = distribute_tensor(v.to(cur.device, cur.dtype), cur.device_mesh, cur.placements)
            cur.copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({**model.state_dict(), **self.shadow})
