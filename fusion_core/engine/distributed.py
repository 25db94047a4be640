"""Multi-process training: ``torchrun`` environment, DDP (gloo on CPU, nccl on CUDA) and FSDP2.

Launch with ``torchrun --nproc_per_node N -m fusion_core.engine.cli run RECIPE ...`` (one machine) or
``torchrun --nnodes M --node_rank R --master_addr HOST --master_port PORT --nproc_per_node N -m
fusion_core.engine.cli run RECIPE ...`` (several); ``fusion run --nproc N`` does the first for you.
Rank 0 alone logs and writes checkpoints.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def check_device_name(device: str, key: str = "train.device") -> None:
    """Refuse a device string torch cannot parse (``banana``), naming ``key`` and the options."""
    if device == "auto":
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{key} must be auto, cpu, cuda, cuda:N or another torch device, got {device!r}") from None


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """The device ``device`` names on this machine (``auto``: CUDA when present, else the CPU;
    ``cuda``: this process's GPU under torchrun).

    Raises:
        ValueError: an unknown device, or CUDA asked for on a machine without it.
    """
    check_device_name(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device, local_rank) if device == "cuda" else torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={device} but this machine has no usable CUDA GPU (torch "
                             f"{torch.__version__}): use train.device=auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"train.device={device}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type not in ("cpu", "cuda") and not hasattr(torch, dev.type):
        raise ValueError(f"train.device={device}: this torch has no {dev.type!r} backend")
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Read the torchrun environment and start the process group (if more than one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def wrap_model(model: nn.Module, info: DistInfo, strategy: str = "ddp") -> nn.Module:
    """DDP, or FSDP2 (``fully_shard`` on each transformer block, then the root) for models that
    do not fit one GPU. Single-process runs are returned unwrapped."""
    if not info.enabled:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.backbone.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def end_worker(code: int = 0) -> NoReturn:
    """End a torchrun worker whose work is done and saved: flush the logs and streams and leave
    through ``os._exit``, without the interpreter's finalization. ``fusion``'s workers end so; end
    your own torchrun script so too, after its last collective and :func:`shutdown`.

    ``destroy_process_group`` does not stop gloo's worker threads while anything still holds the
    process group, and torch's own caches do (DTensor's sharding propagation and FSDP's meshes,
    until the interpreter exits). A thread that drops a finished collective's last reference to a
    tensor Python also holds must take the GIL; if the interpreter is finalizing by then, the
    process aborts ("terminate called without an active exception", SIGABRT, after every file
    was written; pytorch/pytorch#190489): 2 of 83 two-process FSDP runs on a busy two-core CPU.
    """
    import logging
    from contextlib import suppress

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):  # a closed or broken stream has nothing left to flush
            stream.flush()
    os._exit(code)
