"""The optimizer: AdamW with weight decay on matrices only, linear warmup then cosine decay.

Transfusion's (sec. 4.1) is the default: AdamW (0.9, 0.95), eps 1e-8, lr 3e-4, 4k warmup, cosine to
1.5e-5, weight decay 0.1, clip 1.0. The fused kernel is used wherever parameters are plain tensors
(CUDA or CPU): one launch for every parameter, and a step it can skip on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..validation import check_finite_number

SCHEDULES = ("cosine", "constant")
MAX_LR = 10.0  # beyond it every step diverges; a typo (lr=3e4) more likely than a wish
MAX_WEIGHT_DECAY = 10.0

@dataclass
class OptimArgs:
    lr: float = 3e-4
    min_lr: float = 1.5e-5
    warmup: int = 4000
    schedule: str = "cosine"  # cosine | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off

    def __post_init__(self):
        check_finite_number("optim.lr", self.lr, low=0, high=MAX_LR, low_open=True)
        check_finite_number("optim.min_lr", self.min_lr, low=0, high=self.lr)
        check_finite_number("optim.weight_decay", self.weight_decay, low=0, high=MAX_WEIGHT_DECAY)
        check_finite_number("optim.grad_clip", self.grad_clip, low=0)
        check_finite_number("optim.eps", self.eps, low=0, low_open=True)
        if self.warmup < 0:
            raise ValueError(f"optim.warmup must be >= 0, got {self.warmup}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.eps > 0):
            raise ValueError(f"optim: need betas in [0, 1) and eps > 0, got {self.beta1}, {self.beta2}, {self.eps}")


def lr_factor(step: int, args: OptimArgs, total: int) -> float:
    """Multiplier of ``args.lr`` at ``step``: linear warmup, then cosine to ``min_lr``."""
    if args.warmup > 0 and step < args.warmup:
        return (step + 1) / args.warmup
    if args.schedule == "constant":
        return 1.0
    if args.schedule != "cosine":
        raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {args.schedule!r}")
    progress = min(1.0, (step - args.warmup) / max(1, total - args.warmup))
    floor = args.min_lr / args.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, args: OptimArgs, total_steps: int):
    """AdamW with weight decay on matrices only (not norms, biases, or 1-D embeddings)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    # the fused kernel (CUDA or CPU): one launch for every parameter, and a step it can skip on the
    # device (found_inf); plain tensors only, not FSDP shards
    fused = all(p.device.type in ("cuda", "cpu") and not hasattr(p, "full_tensor") for p in decay + no_decay)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps, fused=fused or None,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args, total_steps))
    return opt, sched
