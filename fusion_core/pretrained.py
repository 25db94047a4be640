"""Self-describing saved models: ``FusionModel.save_pretrained`` / ``from_pretrained``.

A saved model is a folder that rebuilds the model with nothing else — not the training data, not
the recipe, not the config it was trained with (the transformers/diffusers convention)::

    model.json          format and version; backbone args; each adapter's class (registered
                        short name or ``module:Class``) and constructor arguments; the diffusion
                        process of each continuous modality; loss settings; free-form metadata
    model.safetensors   weights (tied weights stored once); fitted state such as a time-series
                        scaler lives in buffers, so it is here too
    ema.safetensors     optional EMA weights (preferred for sampling when present)
    manifest.json       size and SHA-256 of every file, checked before loading

The folder is published atomically (:func:`~fusion_core.checkpoint.publish_folder`). Every
training checkpoint also carries ``model.json``, so a checkpoint folder loads the same way, and a
run folder resolves to its newest saved model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from .adapter import UNSAVED
from .checkpoint import (CheckpointError, find_resumable, load_weights, publish_folder,
                         state_dict_for_safetensors, verify_checkpoint)
from .diffusion import GaussianDiffusion
from .registry import adapter_class, class_ref
from .sharded import is_sharded
from .transformer import TransformerArgs

if TYPE_CHECKING:
    from .model import FusionModel

FORMAT = "fusion-core-model"
FORMAT_VERSION = 1
CONFIG_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
EMA_NAME = "ema.safetensors"
WEIGHT_CHOICES = ("auto", "model", "ema")


def model_config(model: "FusionModel", metadata: Mapping[str, Any] | None = None) -> dict:
    """The JSON description :func:`build_model` rebuilds ``model`` from (without weights)."""
    from . import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fusion_core_version": __version__,
        "backbone": dataclasses.asdict(model.backbone.args),
        "adapters": {name: {"class": class_ref(type(a)), "kwargs": a.config()}
                     for name, a in model.adapters.items()},
        "diffusion": {name: d.config() for name, d in model.diffusion.items()},
        "loss": {"loss_weights": dict(model.loss_weights), "cond_dropout": model.cond_dropout,
                 "fourier_weight": dict(model.fourier_weight)},
        "metadata": dict(metadata or {}),
    }


def build_model(config: Mapping[str, Any], adapter_kwargs: Mapping[str, Mapping] | None = None
                ) -> "FusionModel":
    """A freshly initialized model from a :func:`model_config` description.

    Args:
        adapter_kwargs: per adapter name, constructor arguments to add or replace (those the
            config could not hold, such as a tokenizer object).

    Raises:
        ValueError: another format, a newer format version, an adapter class that cannot be
            imported, or a constructor argument that was not saved and not given.
    """
    from .model import FusionModel

    if config.get("format") != FORMAT:
        raise ValueError(f"not a fusion-core model description (format {config.get('format')!r}, "
                         f"expected {FORMAT!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"model format version {version!r} is newer than this fusion-core reads "
                         f"({FORMAT_VERSION}; saved by fusion-core {config.get('fusion_core_version')}): "
                         "upgrade fusion-core")
    extra = dict(adapter_kwargs or {})
    unknown = set(extra) - set(config["adapters"])
    if unknown:
        raise ValueError(f"adapter_kwargs names unknown adapters {sorted(unknown)}; the model has "
                         f"{sorted(config['adapters'])}")
    backbone_fields = {f.name for f in dataclasses.fields(TransformerArgs)}
    odd = set(config["backbone"]) - backbone_fields
    if odd:
        raise ValueError(f"backbone args {sorted(odd)} are unknown to this fusion-core: upgrade it")
    adapters = []
    for name, spec in config["adapters"].items():
        try:
            cls = adapter_class(spec["class"])
        except ValueError as e:
            raise ValueError(f"adapter {name!r}: its class {spec['class']!r} cannot be loaded ({e}); "
                             "install the package that defines it") from None
        kwargs = {**spec["kwargs"], **extra.get(name, {})}
        missing = [k for k, v in kwargs.items() if isinstance(v, dict) and UNSAVED in v]
        if missing:
            raise ValueError(
                f"adapter {name!r} was built with {', '.join(f'{k}=<{kwargs[k][UNSAVED]}>' for k in missing)}, "
                f"which cannot be saved; pass it again: from_pretrained(..., adapter_kwargs={{{name!r}: "
                f"{{{', '.join(repr(k) + ': ...' for k in missing)}}}}})")
        adapters.append(cls(**kwargs))
    diffusion = {name: GaussianDiffusion.from_config(c) for name, c in config["diffusion"].items()}
    loss = config["loss"]
    return FusionModel(TransformerArgs(**config["backbone"]), adapters, diffusion or None,
                       loss_weights=loss["loss_weights"], cond_dropout=loss["cond_dropout"],
                       fourier_weight=loss["fourier_weight"] or None)


def save_pretrained(model: "FusionModel", directory: str | Path, ema: Mapping[str, torch.Tensor] | None = None,
                    metadata: Mapping[str, Any] | None = None,
                    weights: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (and optional EMA weights, a state dict of the same keys) as a folder
    :func:`load_pretrained` reads; published atomically, replacing an older save. ``weights``
    replaces the model's own state dict (the trainer passes the gathered one under FSDP)."""
    config = json.dumps(model_config(model, metadata), indent=1)
    weights = state_dict_for_safetensors(model) if weights is None else dict(weights)

    def write(tmp: Path) -> None:
        (tmp / CONFIG_NAME).write_text(config)
        save_file(weights, str(tmp / WEIGHTS_NAME))
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / EMA_NAME))

    return publish_folder(Path(directory), write)


def resolve(path: str | Path) -> Path:
    """The saved-model folder ``path`` names: a ``save_pretrained`` folder, a checkpoint folder,
    or a run folder (its ``model/`` or its newest good checkpoint, whichever holds the later
    training step).

    Raises:
        ValueError: no such folder, or nothing loadable in it.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such folder (expected a saved model or a run folder)")
    if (path / CONFIG_NAME).is_file():
        return path
    candidates = []
    if (path / "model" / CONFIG_NAME).is_file():
        candidates.append(path / "model")
    ckpt = find_resumable(path / "checkpoints")
    if ckpt is not None and (ckpt / CONFIG_NAME).is_file():
        candidates.append(ckpt)
    if not candidates:
        raise ValueError(f"{path}: no saved model here (expected {CONFIG_NAME}, or a run folder with "
                         "model/ or a checkpoint; a run that never reached its first checkpoint has none)")
    return max(candidates, key=lambda p: _step(p))


def _step(folder: Path) -> int:
    meta = json.loads((folder / CONFIG_NAME).read_text()).get("metadata", {})
    return int(meta.get("step", -1))


def read_config(path: str | Path) -> dict:
    """The ``model.json`` of a saved model (see :func:`resolve` for what ``path`` may be)."""
    folder = resolve(path)
    try:
        return json.loads((folder / CONFIG_NAME).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / CONFIG_NAME}: not valid JSON ({e})") from None


def load_pretrained(path: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None, weights: str = "auto",
                    adapter_kwargs: Mapping[str, Mapping] | None = None, verify: bool = True
                    ) -> "FusionModel":
    """Rebuild a saved model and load its weights; returned in ``eval()`` mode.

    Args:
        path: a saved-model, checkpoint or run folder (:func:`resolve`).
        device, dtype: where and in which floating type to put it (default: CPU, as saved).
        weights: ``"auto"`` (EMA weights when saved, else the model's), ``"model"`` or ``"ema"``.
        adapter_kwargs: constructor arguments that could not be saved (see :func:`build_model`).
        verify: check every file against the manifest first.

    Raises:
        ValueError: see :func:`build_model` and :func:`resolve`; a corrupt folder; weights whose
            names or shapes do not fit the described model (each named).
    """
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    folder = resolve(path)
    if verify:
        try:
            verify_checkpoint(folder)
        except CheckpointError as e:
            raise ValueError(f"cannot load: {e}") from None
    model = build_model(read_config(folder), adapter_kwargs)
    if is_sharded(folder) and not (folder / WEIGHTS_NAME).is_file():
        _load_sharded_weights(model, folder, weights)
    else:
        _load_checked(model, folder / WEIGHTS_NAME)
        ema = folder / EMA_NAME
        if weights == "ema" and not ema.is_file():
            raise ValueError(f"{folder}: no EMA weights saved (use weights='model' or 'auto')")
        if weights != "model" and ema.is_file():
            state = load_file(str(ema))
            _check_shapes(model, state, ema)
            model.load_state_dict({**model.state_dict(), **state})
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def _load_sharded_weights(model: "FusionModel", folder: Path, weights: str) -> None:
    """A sharded (FSDP) training checkpoint read in this one process: the consolidated model
    (``save_pretrained`` it to get a single safetensors file), EMA weights when saved and wanted."""
    import torch.distributed.checkpoint as dcp

    from .sharded import load_sharded

    saved = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    has_ema = any(k.startswith("ema.") for k in saved)
    if weights == "ema" and not has_ema:
        raise ValueError(f"{folder}: no EMA weights saved (use weights='model' or 'auto')")
    ema = ({k: v.clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}
           if has_ema and weights != "model" else None)
    load_sharded(folder, model, None, ema)
    if ema is not None:
        model.load_state_dict({**model.state_dict(), **ema})


def _check_shapes(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ValueError(f"{source}: weights {unexpected[:5]} do not exist in the described model")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, the described model "
                             f"{tuple(own[k].shape)}")


def _load_checked(model: torch.nn.Module, path: Path) -> None:
    state = load_file(str(path))
    _check_shapes(model, state, path)
    try:
        load_weights(model, path)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
