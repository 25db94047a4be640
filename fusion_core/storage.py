"""Files that survive crashes, and only the files we wrote: the storage rules the model layer
(``save_pretrained`` / ``from_pretrained``) and the training engine (checkpoints, run folders)
share.

- :func:`atomic_write_bytes` / :func:`atomic_write_text` — a file replaced in one ``rename``.
- :func:`publish_folder` — a folder filled under a temporary name, given a ``manifest.json`` of
  every file's size and SHA-256, and renamed into place; :func:`verify_folder` checks it.
- :func:`list_checkpoints` / :func:`find_resumable` — the read side of a run's ``checkpoints/``
  (``step_00000100/`` folders and a ``latest`` pointer), which loading a model from a run folder
  shares with resuming it.
- :func:`is_ours` — whether a name is one of the temporaries these functions create, so that
  cleaning up after a crash deletes nothing else (a user's ``.my.notes.txt`` stays).

Every temporary name starts with ``.fusion-tmp-`` (a file or folder being written) or
``.fusion-old-`` (a folder being replaced). Nothing here follows a symbolic link it did not
create: a link where a file or folder is to be written is refused (:class:`LinkRefused`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from torch import nn

PREFIX = "step_"  # checkpoint folders: step_00000100
TMP = ".fusion-tmp-"  # a file or folder being written
OLD = ".fusion-old-"  # a folder being replaced
MANIFEST = "manifest.json"

# names earlier releases gave their temporaries (cleaned up after them too, and nothing else)
_LEGACY = re.compile(r"^\.(tmp-(step_\d{8}|model)-([a-z0-9_]{8}|sharded)|old-(step_\d{8}|model)-\d+|"
                     r"(config\.yaml|metrics\.jsonl|latest|train_time\.json|eval\.json)\.[a-z0-9_]{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint or saved-model folder is missing, truncated or corrupt."""


class LinkRefused(ValueError):
    """A path fusion-core was about to write or delete is a symbolic link it did not create."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: temporaries are created 0600/0700, published files get the usual mode
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def refuse_link(path: Path, what: str = "") -> None:
    """Raise :class:`LinkRefused` if ``path`` is a symbolic link (checked without following it)."""
    if Path(path).is_symlink():
        raise LinkRefused(f"{path} is a symbolic link{' (' + what + ')' if what else ''}: fusion-core "
                          "never writes or deletes through a link it did not create; remove the link")


def is_ours(name: str) -> bool:
    """Whether ``name`` is a temporary that :func:`atomic_write_bytes` or :func:`publish_folder`
    (of this release or an earlier one) creates."""
    return name.startswith((TMP, OLD)) or bool(_LEGACY.match(name))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename (a link at ``path`` is refused, not written
    through). The file gets the usual mode (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_link(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP}{path.name}.")
    try:
        os.fchmod(fd, FILE_MODE)
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


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_for_safetensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safetensors can store: contiguous CPU tensors, tied weights stored once
    (a later key that aliases an earlier one is dropped; :func:`load_weights` accepts its
    absence)."""
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
    """Load the safetensors file ``path`` into ``module``; keys missing from the file must be
    tied aliases.

    Raises:
        CheckpointError: keys the module does not have, or keys it needs that are missing.
    """
    state = load_file(str(path))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected:
        raise CheckpointError(f"{path}: unexpected keys {unexpected[:5]}")
    own = module.state_dict()
    ptrs = {own[k].data_ptr() for k in state if k in own}
    really_missing = [k for k in missing if own[k].data_ptr() not in ptrs]
    if really_missing:
        raise CheckpointError(f"{path}: missing keys {really_missing[:5]}")


def remove_ours(path: Path) -> None:
    """Delete a file or folder this module created (a temporary, or a replaced folder). A
    symbolic link is unlinked, never followed."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def publish_folder(final: Path, write: Callable[[Path], None], meta: dict | None = None,
                   tmp: Path | None = None) -> Path:
    """Create the folder ``final`` atomically: ``write(tmp)`` fills a temporary sibling, a
    ``manifest.json`` of every file's size and SHA-256 is added, everything is fsynced, and the
    folder is renamed into place (replacing an older ``final`` only after the new one is
    complete). A crash at any moment leaves the old folder or the new one, never a mix. ``meta``
    is stored in the manifest beside the file list. ``tmp``: a temporary folder that already
    holds files (other processes' shards), to publish instead of a fresh one.

    Raises:
        LinkRefused: ``final`` is a symbolic link.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    refuse_link(final)
    tmp = Path(tmp) if tmp is not None else Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{TMP}{final.name}-"))
    try:
        os.chmod(tmp, DIR_MODE)
        write(tmp)
        delay = float(os.environ.get("FUSION_CKPT_WRITE_DELAY", "0"))  # fault injection (tests)
        if delay:
            time.sleep(delay)
        files = sorted(f.name for f in tmp.iterdir() if f.is_file() and not f.is_symlink())
        manifest = {**(meta or {}), "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256(tmp / f)}
                                              for f in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for f in tmp.iterdir():
            if f.is_file() and not f.is_symlink():
                os.chmod(f, FILE_MODE)  # what writers create 0600 (safetensors) gets the usual mode
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if final.exists():
            old = final.parent / f"{OLD}{final.name}-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            remove_ours(old)
    except BaseException:
        remove_ours(tmp)
        raise
    return final


def verify_folder(path: Path) -> dict:
    """Check every file of a published folder against its manifest; return the manifest.

    Raises:
        CheckpointError: missing or unreadable manifest, a missing file, wrong size or checksum.
    """
    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (incomplete checkpoint)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        entries = [(str(name), int(meta["bytes"]), str(meta["sha256"])) for name, meta in files.items()]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} ({type(e).__name__}: {e})") from None
    for name, size, digest in entries:
        f = Path(path) / name
        if "/" in name or name.startswith(".."):
            raise CheckpointError(f"{path}: {MANIFEST} names {name!r}, outside the folder")
        if f.is_symlink() or not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing" + (" (a symbolic link)" if f.is_symlink() else ""))
        got = f.stat().st_size
        if got != size:
            raise CheckpointError(f"{path}: {name} is {got} bytes, expected {size} (truncated or changed)")
        if sha256(f) != digest:
            raise CheckpointError(f"{path}: {name} fails its checksum (corrupt)")
    return manifest


def list_checkpoints(root: Path) -> list[Path]:
    """Complete-looking checkpoint folders under ``root``, oldest first (temporaries and
    symbolic links excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.name.startswith(PREFIX) and p.is_dir() and not p.is_symlink())


def find_resumable(root: Path, log=None) -> Path | None:
    """The newest checkpoint under ``root`` that verifies, preferring the ``latest`` pointer;
    each bad one is reported through ``log`` (a ``logging.Logger``) and the previous one tried."""
    root = Path(root)
    candidates = list_checkpoints(root)
    pointer = root / "latest"
    if pointer.is_file() and not pointer.is_symlink():
        named = root / pointer.read_text(errors="replace").strip()
        if named in candidates:  # newest first, starting from the pointer
            candidates = candidates[: candidates.index(named) + 1]
    for path in reversed(candidates):
        try:
            verify_folder(path)
            return path
        except CheckpointError as e:
            if log is not None:
                log.warning("skipping checkpoint: %s; falling back to the previous one", e)
    return None
