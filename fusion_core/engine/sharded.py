"""Sharded checkpoints for FSDP2 runs (``torch.distributed.checkpoint``): every process writes and
reads its own shards, nothing is gathered into one process, and a checkpoint saved by N processes
resumes on M (DCP reshards on load; one process reads it without a process group).

A sharded checkpoint folder holds DCP's files (``.metadata`` and one ``*.distcp`` per process:
model, optimizer and EMA state under the keys ``model``, ``optim``, ``ema``) next to the usual
``state.pt`` (step, schedule, RNG states), ``config.yaml``, ``model.json`` and ``manifest.json``.
All processes write into one temporary folder; the main process then adds the rest and publishes
it atomically, exactly as for an unsharded checkpoint (:func:`fusion_core.checkpoint.save_checkpoint`),
so a kill at any moment leaves the previous checkpoint as the newest complete one.

Optimizer state is keyed by parameter name (``get_optimizer_state_dict``) in both formats, so an
unsharded checkpoint also loads into a sharded run and the other way round.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import PREFIX, save_checkpoint
from .distributed import DistInfo, barrier

METADATA = ".metadata"


def is_sharded(path: Path) -> bool:
    """Whether a checkpoint folder holds DCP shards."""
    return (Path(path) / METADATA).is_file()


def _state(model: nn.Module, opt: torch.optim.Optimizer, ema: dict | None) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)  # sharded (DTensor) under FSDP, plain otherwise
    out = {"model": model_sd, "optim": optim_sd}
    if ema is not None:
        out["ema"] = ema  # loaded in place: the EMA's own tensors
    return out


def save_sharded(ckpt_dir: Path, step: int, model: nn.Module, opt: torch.optim.Optimizer, ema: dict | None,
                 state: dict, config_yaml: str, keep_last: int, extra: dict[str, str], info: DistInfo) -> Path | None:
    """Write one sharded checkpoint (collective); returns its folder on the main process."""
    import torch.distributed.checkpoint as dcp

    tmp = Path(ckpt_dir) / f".tmp-{PREFIX}{step:08d}-sharded"  # one name every process agrees on
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    with _single_process_quiet():
        dcp.save(_state(model, opt, ema), checkpoint_id=str(tmp), no_dist=not info.enabled)
    barrier(info)
    path = None
    if info.is_main:
        path = save_checkpoint(Path(ckpt_dir), step, {}, state, config_yaml, keep_last, extra, tmp=tmp)
    barrier(info)
    return path


def load_sharded(path: Path, model: nn.Module, opt: torch.optim.Optimizer | None, ema: dict | None,
                 info: DistInfo | None = None) -> None:
    """Load a sharded checkpoint into ``model`` (and ``opt``, ``ema``) as they are sharded now:
    any number of processes, or one without a process group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    distributed = info is not None and info.enabled
    if opt is None:  # weights only (from_pretrained of a sharded checkpoint)
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        sd = {"model": get_model_state_dict(model)}
        if ema is not None:
            sd["ema"] = ema
        with _single_process_quiet():
            dcp.load(sd, checkpoint_id=str(path), no_dist=not distributed)
        set_model_state_dict(model, sd["model"])
        return
    sd = _state(model, opt, ema)
    with _single_process_quiet():
        dcp.load(sd, checkpoint_id=str(path), no_dist=not distributed)
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it assumes one process whenever no process group exists: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield
