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

DCP's index (``.metadata``) and its non-tensor entries are pickles, and torch unpickles them in
full. A run folder may come from someone else, so this module reads them with
:class:`SafeReader` and :class:`SafePlanner`: the index through an unpickler that knows only
DCP's own metadata classes (anything else — ``os.system``, a class on ``PYTHONPATH`` — is
refused, naming it), the entries with ``torch.load(weights_only=True)``. ``from_pretrained``
reads no sharded checkpoint at all (:func:`fusion_core.pretrained.load_pretrained`).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from ..pretrained import SHARDED_MARKER as METADATA
from ..storage import TMP, CheckpointError, remove_ours
from .checkpoint import PREFIX, save_checkpoint
from .distributed import DistInfo, barrier

# what DCP's index may name: its own metadata classes and the torch values they hold
_DCP = "torch.distributed.checkpoint"
_ALLOWED = {
    (f"{_DCP}.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {(f"{_DCP}.filesystem", "_StorageInfo"), ("torch", "Size"), ("torch.serialization", "_get_layout"),
     ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path"), ("collections", "OrderedDict")}


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles DCP's index and nothing else (Python's "restricting globals" recipe)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a checkpoint index never holds")


class SafeReader(FileSystemReader):
    """A DCP ``FileSystemReader`` whose index is read by a restricted unpickler."""

    def read_metadata(self, *args, **kwargs):
        path = Path(self.path) / METADATA
        try:
            with open(path, "rb") as f:
                metadata = _IndexUnpickler(f).load()
        except Exception as e:  # noqa: BLE001 - any failure to read a foreign pickle is a refusal
            raise CheckpointError(f"{path}: refused to read this sharded checkpoint's index ({e}); fusion-core "
                                  "never writes one like it") from None
        from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path}: not a checkpoint index (a {type(metadata).__name__})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """DCP's default load planner, with non-tensor entries read by ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"refused entry {read_item.dest_index.fqn!r} of a sharded checkpoint: it holds "
                                  f"pickled objects other than tensors and plain values ({type(e).__name__})") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint.default_planner import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def safe_load(state: dict, path: Path, distributed: bool = False) -> None:
    """``dcp.load`` of ``state`` (in place) from ``path`` through :class:`SafeReader` and
    :class:`SafePlanner`; a refusal surfaces as one :class:`CheckpointError`, not DCP's
    multi-process traceback."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with _single_process_quiet():
            dcp.load(state, storage_reader=SafeReader(str(path)), planner=SafePlanner(), no_dist=not distributed)
    except CheckpointException as e:
        inner = [err for err in getattr(e, "failures", {}).values() if isinstance(err, BaseException)]
        first = next((err for err in inner if isinstance(err, CheckpointError)), None)
        if first is None:
            text = str(e)
            first = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                          if "CheckpointError:" in line), None)
            first = first or f"{path}: cannot read this sharded checkpoint ({text.splitlines()[0]})"
            raise CheckpointError(first) from None
        raise CheckpointError(str(first)) from None


def read_index(path: Path):
    """A sharded checkpoint's index (DCP ``Metadata``), read safely."""
    return SafeReader(str(path)).read_metadata()


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

    tmp = Path(ckpt_dir) / f"{TMP}{PREFIX}{step:08d}-sharded"  # one name every process agrees on
    if info.is_main:
        remove_ours(tmp)
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
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    distributed = info is not None and info.enabled
    if opt is None:  # weights only (load_sharded_model)
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        sd = {"model": get_model_state_dict(model)}
        if ema is not None:
            sd["ema"] = ema
        safe_load(sd, path, distributed)
        set_model_state_dict(model, sd["model"])
        return
    sd = _state(model, opt, ema)
    safe_load(sd, path, distributed)
    flags = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g} for g in opt.param_groups]
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    for group, kept in zip(opt.param_groups, flags):  # how this process steps, not how the saver did
        group.update(kept)


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it assumes one process whenever no process group exists: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def load_sharded_model(folder: Path, weights: str = "auto", trust_remote_code: bool = False, device=None) -> nn.Module:
    """The model of a sharded checkpoint folder, consolidated in this one process (``weights``:
    ``auto`` = EMA weights when saved, ``model`` or ``ema``), in ``eval()`` mode.

    Raises:
        ValueError: what :func:`fusion_core.pretrained.build_model` raises; no EMA weights
            when ``weights="ema"``; a corrupt folder or an index that is not DCP's own.
    """
    from ..model import FusionModel
    from ..pretrained import CONFIG_NAME, build_model, read_config
    from ..storage import verify_folder

    folder = Path(folder)
    try:
        verify_folder(folder)
        saved = read_index(folder).state_dict_metadata
    except CheckpointError as e:
        raise ValueError(f"cannot load: {e}") from None
    model = build_model(FusionModel, read_config(folder), None, trust_remote_code,
                        source=str(folder / CONFIG_NAME), device=device)
    has_ema = any(k.startswith("ema.") for k in saved)
    if weights == "ema" and not has_ema:
        raise ValueError(f"{folder}: no EMA weights saved (use weights='model' or 'auto')")
    ema = ({k: v.clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}
           if has_ema and weights != "model" else None)
    load_sharded(folder, model, None, ema)
    if ema is not None:
        model.load_state_dict({**model.state_dict(), **ema})
    return model.to(device or "cpu").eval()
