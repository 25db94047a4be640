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
reported and :func:`load_latest` falls back to the previous good one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or corrupt."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: temporary files are created 0600/0700, published ones get the usual mode


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_for_safetensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safetensors can store: contiguous CPU tensors, tied weights stored once
    (a later key that aliases an earlier one is dropped and restored by ``load_state_dict``
    with ``strict=False`` semantics handled in :func:`load_weights`)."""
    out, seen = {}, {}
    for k, v in module.state_dict().items():
        key = (v.data_ptr(), v.shape, v.stride()) if v.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = k
        out[k] = v.detach().cpu().contiguous()
    return out


def load_weights(module: nn.Module, path: Path) -> None:
    """Load ``path`` into ``module``; keys missing from the file must be tied aliases."""
    state = load_file(str(path))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected:
        raise CheckpointError(f"{path}: unexpected keys {unexpected[:5]}")
    own = module.state_dict()
    ptrs = {own[k].data_ptr() for k in state if k in own}
    really_missing = [k for k in missing if own[k].data_ptr() not in ptrs]
    if really_missing:
        raise CheckpointError(f"{path}: missing keys {really_missing[:5]}")


def publish_folder(final: Path, write: Callable[[Path], None], meta: dict | None = None,
                   tmp: Path | None = None) -> Path:
    """Create the folder ``final`` atomically: ``write(tmp)`` fills a temporary sibling, a
    ``manifest.json`` of every file's size and SHA-256 is added, everything is fsynced, and the
    folder is renamed into place (replacing an older ``final`` only after the new one is
    complete). A crash at any moment leaves the old folder or the new one, never a mix. ``meta``
    is stored in the manifest beside the file list. ``tmp``: a temporary folder that already
    holds files (other processes' shards), to publish instead of a fresh one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tmp) if tmp is not None else Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        write(tmp)
        delay = float(os.environ.get("FUSION_CKPT_WRITE_DELAY", "0"))  # fault injection (tests)
        if delay:
            time.sleep(delay)
        files = sorted(f.name for f in tmp.iterdir() if f.is_file())
        manifest = {**(meta or {}), "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)} for f in files}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete-looking checkpoint folders, oldest first (temporary folders excluded)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def verify_checkpoint(path: Path) -> dict:
    """Check every file against the manifest; return the manifest.

    Raises:
        CheckpointError: missing manifest or file, wrong size, wrong checksum.
    """
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise CheckpointError(f"{path}: no manifest.json (incomplete checkpoint)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable manifest.json ({e})") from None
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        size = f.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(f"{path}: {name} is {size} bytes, expected {meta['bytes']} (truncated or changed)")
        if _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"{path}: {name} fails its checksum (corrupt)")
    return manifest


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
    candidates = list_checkpoints(root)
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named in candidates:  # newest first, starting from the pointer
            candidates = candidates[: candidates.index(named) + 1]
    for path in reversed(candidates):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s; falling back to the previous one", e)
    return None
