"""Checkpoints that survive crashes.

A checkpoint is a folder ``checkpoints/step_00000100/`` holding:

- ``model.safetensors`` (and ``ema.safetensors``): weights;
- ``state.pt``: optimizer, LR schedule, RNG states, data position, step (``torch.load`` with
  ``weights_only=True``);
- ``config.yaml``: the resolved config;
- ``manifest.json``: size and SHA-256 of every file above.

It is written under a temporary name and renamed into place only when complete, and then the
``latest`` pointer file is replaced atomically, so a crash mid-write never leaves a partial
checkpoint as the latest. Loading verifies the manifest; a corrupt or truncated checkpoint is
reported and :func:`find_resumable` falls back to the previous good one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..storage import (PREFIX, CheckpointError, atomic_write_bytes, atomic_write_text, list_checkpoints,
                       load_weights, publish_folder, remove_ours, sha256, state_dict_for_safetensors,
                       verify_folder)
from ..storage import find_resumable as _find_resumable

log = logging.getLogger(__name__)

verify_checkpoint = verify_folder  # the name this module has always used


def save_checkpoint(root: Path, step: int, weights: dict[str, dict[str, torch.Tensor]],
                    state: dict[str, Any], config_yaml: str, keep_last: int = 3,
                    extra: dict[str, str] | None = None, tmp: Path | None = None) -> Path:
    """Write one checkpoint atomically and point ``latest`` at it.

    Args:
        root: the ``checkpoints/`` folder.
        weights: file stem → state dict (e.g. ``{"model": ..., "ema": ...}``).
        state: training state for ``state.pt``.
        keep_last: how many checkpoints up to this one to keep (older ones are deleted; a
            checkpoint of a later step, left by another history, is never touched).
        extra: more text files, name → contents (``model.json``: the checkpoint is then also a
            ``from_pretrained`` folder).
        tmp: a temporary folder other processes already wrote shards into (sharded checkpoints).
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"

    def write(tmp: Path) -> None:
        for stem, sd in weights.items():
            save_file(sd, str(tmp / f"{stem}.safetensors"))
        torch.save({**state, "step": step}, tmp / "state.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)

    publish_folder(final, write, {"step": step}, tmp=tmp)
    atomic_write_text(root / "latest", final.name + "\n")
    older = [p for p in list_checkpoints(root) if p.name < final.name]  # zero-padded: name order = step order
    for old in older[: max(len(older) - (keep_last - 1), 0)] if keep_last > 0 else []:
        remove_ours(old)
    return final


def load_state(path: Path) -> dict:
    """A checkpoint's training state, loaded with ``weights_only=True`` (tensors and plain
    containers only).

    Raises:
        CheckpointError: the file holds other pickled objects; it is refused, not unpickled
            (unpickling can run arbitrary code).
    """
    try:
        return torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, ... depending on what the pickle holds
        raise CheckpointError(f"{path / 'state.pt'} holds pickled objects other than tensors and plain "
                              f"containers; refused ({type(e).__name__}): a checkpoint fusion-core wrote never "
                              "does") from None


def find_resumable(root: Path) -> Path | None:
    """The newest checkpoint that verifies, preferring the ``latest`` pointer; each bad one is
    logged with the reason, and the previous one is tried."""
    return _find_resumable(root, log)


__all__ = ["PREFIX", "CheckpointError", "atomic_write_bytes", "atomic_write_text", "find_resumable",
           "list_checkpoints", "load_state", "load_weights", "publish_folder", "save_checkpoint", "sha256",
           "state_dict_for_safetensors", "verify_checkpoint"]
