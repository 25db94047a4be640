"""Exponential moving average of a model's weights (what diffusion models sample with)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Exponential moving average of a model's floating-point state (used for sampling)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()
                       if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        state = model.state_dict()
        keys = [k for k in self.shadow if k in state]
        new = [state[k].float() for k in keys]
        if any(hasattr(v, "full_tensor") for v in new):  # FSDP shards: one at a time
            for k, v in zip(keys, new):
                self.shadow[k].lerp_(v, 1 - self.decay)
        else:  # a few kernels for the whole model instead of one per tensor
            torch._foreach_lerp_([self.shadow[k] for k in keys], new, 1 - self.decay)

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
