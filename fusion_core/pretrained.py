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

The folder is published atomically (:func:`~fusion_core.storage.publish_folder`). Every
training checkpoint also carries ``model.json``, so a checkpoint folder loads the same way, and a
run folder resolves to its newest saved model.

The trust boundary (DESIGN.md): a folder may come from someone else. Loading reads JSON and
safetensors only — nothing is unpickled — and imports nothing the folder names: adapter classes
resolve through the registry (:mod:`fusion_core.registry`) unless ``trust_remote_code=True``.
Sizes are checked against memory before the model is built. Saving writes only into a new or
empty folder or over an earlier save, never deleting a file it did not write.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter import UNSAVED
from .diffusion import GaussianDiffusion
from .registry import UntrustedCode, adapter_class, class_ref
from .storage import (MANIFEST, CheckpointError, find_resumable, load_weights, publish_folder, refuse_link,
                      state_dict_for_safetensors, verify_folder)
from .transformer import TransformerArgs
from .validation import check_fits

log = logging.getLogger("fusion_core")

FORMAT = "fusion-core-model"
FORMAT_VERSION = 1
CONFIG_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
EMA_NAME = "ema.safetensors"
WEIGHT_CHOICES = ("auto", "model", "ema")


def model_config(model: nn.Module, metadata: Mapping[str, Any] | None = None) -> dict:
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


def _section(config: Mapping, key: str, source: str, kind=dict):
    value = config.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"{source}: {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def check_config(config: Any, source: str = CONFIG_NAME) -> TransformerArgs:
    """Validate a :func:`model_config` description before anything is built or imported; returns
    its backbone args.

    Raises:
        ValueError: another format, a newer format version, a missing or mistyped section, or
            backbone args this fusion-core does not know or accept (each named, with ``source``).
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{source}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise ValueError(f"{source}: not a fusion-core model description (format {config.get('format')!r}, "
                         f"expected {FORMAT!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ValueError(f"{source}: model format version {version!r} is newer than this fusion-core reads "
                         f"({FORMAT_VERSION}; saved by fusion-core {config.get('fusion_core_version')}): "
                         "upgrade fusion-core")
    backbone = _section(config, "backbone", source)
    backbone_fields = {f.name for f in dataclasses.fields(TransformerArgs)}
    odd = set(backbone) - backbone_fields
    if odd:
        raise ValueError(f"{source}: backbone args {sorted(odd)} are unknown to this fusion-core: upgrade it")
    try:
        args = TransformerArgs(**backbone)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: backbone: {e}") from None
    for name, spec in _section(config, "adapters", source).items():
        if not (isinstance(spec, Mapping) and isinstance(spec.get("class"), str)
                and isinstance(spec.get("kwargs", {}), Mapping)):
            raise ValueError(f"{source}: adapter {name!r} must be {{'class': str, 'kwargs': {{...}}}}, "
                             f"got {spec!r:.80}")
    for name, spec in _section(config, "diffusion", source).items():
        if not isinstance(spec, Mapping):
            raise ValueError(f"{source}: diffusion of {name!r} must be a mapping, got {type(spec).__name__}")
    loss = _section(config, "loss", source)
    for key, kind in (("loss_weights", dict), ("cond_dropout", (int, float)), ("fourier_weight", (dict, type(None)))):
        if not isinstance(loss.get(key), kind):
            raise ValueError(f"{source}: loss.{key} is missing or of the wrong type ({loss.get(key)!r:.40})")
    return args


def build_model(model_cls: type, config: Mapping[str, Any], adapter_kwargs: Mapping[str, Mapping] | None = None,
                trust_remote_code: bool = False, source: str = CONFIG_NAME, device=None):
    """A freshly initialized ``model_cls`` (a :class:`~fusion_core.model.FusionModel`) from a
    :func:`model_config` description. Adapter classes resolve through the registry only (see
    :mod:`fusion_core.registry`); the model's size is checked against memory before it is built.

    Args:
        adapter_kwargs: per adapter name, constructor arguments to add or replace (those the
            config could not hold, such as a tokenizer object).
        trust_remote_code: allow adapter classes named by a dotted path outside the registry.
        source: what the description came from, for messages.
        device: where the model will live (its memory is checked there).

    Raises:
        ValueError: see :func:`check_config`; an adapter class outside the registry without
            ``trust_remote_code`` (:class:`~fusion_core.registry.UntrustedCode`), one that cannot
            be imported or is not an ``Adapter``; a constructor argument that was not saved and
            not given; a model too large for the memory available.
    """
    args = check_config(config, source)
    extra = dict(adapter_kwargs or {})
    unknown = set(extra) - set(config["adapters"])
    if unknown:
        raise ValueError(f"adapter_kwargs names unknown adapters {sorted(unknown)}; the model has "
                         f"{sorted(config['adapters'])}")
    classes = {}
    for name, spec in config["adapters"].items():  # every class resolved before any is called
        try:
            classes[name] = adapter_class(spec["class"], trust_remote_code)
        except UntrustedCode as e:
            raise UntrustedCode(f"{source}: adapter {name!r}: {e}") from None
        except ValueError as e:
            raise ValueError(f"{source}: adapter {name!r}: its class {spec['class']!r} cannot be loaded ({e}); "
                             "install the package that defines it") from None
    kwargs = {}
    for name, spec in config["adapters"].items():
        kw = {**spec.get("kwargs", {}), **extra.get(name, {})}
        missing = [k for k, v in kw.items() if isinstance(v, dict) and UNSAVED in v]
        if missing:
            raise ValueError(
                f"adapter {name!r} was built with {', '.join(f'{k}=<{kw[k][UNSAVED]}>' for k in missing)}, "
                f"which cannot be saved; pass it again: from_pretrained(..., adapter_kwargs={{{name!r}: "
                f"{{{', '.join(repr(k) + ': ...' for k in missing)}}}}})")
        kwargs[name] = kw
    loss = config["loss"]

    def build():
        adapters = []
        for name, cls in classes.items():
            try:
                adapters.append(cls(**kwargs[name]))
            except TypeError as e:
                raise ValueError(f"{source}: adapter {name!r} ({cls.__name__}): {e}") from None
        diffusion = {}
        for name, c in config["diffusion"].items():
            try:
                diffusion[name] = GaussianDiffusion.from_config(dict(c))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{source}: diffusion of {name!r}: {e}") from None
        return model_cls(args, adapters, diffusion or None, loss_weights=loss["loss_weights"],
                         cond_dropout=loss["cond_dropout"], fourier_weight=loss["fourier_weight"] or None)

    check_fits(4 * args.num_params, f"{source}: a backbone of {args.num_params / 1e6:,.1f} M parameters", device)
    nbytes = _meta_size(build)
    if nbytes is not None:
        check_fits(nbytes, f"{source}: a model of {nbytes / 4e6:,.1f} M parameters", device)
    return build()


def _meta_size(build) -> int | None:
    """Bytes of the parameters and buffers ``build()`` would allocate, measured by building on
    the meta device (nothing allocated); None when an adapter cannot be built there."""
    try:
        with torch.device("meta"):
            model = build()
    except ValueError:
        raise
    except Exception:  # noqa: BLE001 - an adapter that computes real values in __init__: size unknown
        return None
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def save_pretrained(model: nn.Module, directory: str | Path, ema: Mapping[str, torch.Tensor] | None = None,
                    metadata: Mapping[str, Any] | None = None,
                    weights: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (and optional EMA weights, a state dict of the same keys) as a folder
    :func:`load_pretrained` reads, published atomically. ``weights`` replaces the model's own
    state dict (the trainer passes the gathered one under FSDP). Always consolidated safetensors
    and JSON: a saved model holds no pickle.

    ``directory`` may be new, empty, or an earlier save (replaced as a whole, atomically); a
    folder holding anything else is refused, so nothing of the user's is ever deleted.

    Raises:
        ValueError: ``directory`` is a file, a symbolic link, or a folder with files this
            function did not write (the message names some).
    """
    directory = Path(directory)
    check_save_target(directory)
    config = json.dumps(model_config(model, metadata), indent=1)
    weights = state_dict_for_safetensors(model) if weights is None else dict(weights)

    def write(tmp: Path) -> None:
        (tmp / CONFIG_NAME).write_text(config)
        save_file(weights, str(tmp / WEIGHTS_NAME))
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / EMA_NAME))

    return publish_folder(directory, write)


SAVED_FILES = (CONFIG_NAME, WEIGHTS_NAME, EMA_NAME, MANIFEST)


def check_save_target(directory: Path) -> None:
    """Refuse a ``save_pretrained`` target that holds anything but an earlier save.

    Raises:
        ValueError: ``directory`` is a symbolic link, a file, or a folder with other files.
    """
    refuse_link(directory, "the save_pretrained folder")
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ValueError(f"{directory} is a file, not a folder: save_pretrained writes a folder")
    entries = sorted(p.name for p in directory.iterdir())
    foreign = [n for n in entries if n not in SAVED_FILES or (directory / n).is_symlink()
               or not (directory / n).is_file()]
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise ValueError(f"{directory} holds files save_pretrained did not write ({shown}); it replaces the "
                         "whole folder, so it saves only into a new or empty folder or over an earlier save")
    if entries and CONFIG_NAME not in entries:
        raise ValueError(f"{directory} holds {', '.join(entries)} but no {CONFIG_NAME}: not an earlier save; "
                         "choose a new or empty folder")


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
        try:
            verify_folder(path / "model")
            candidates.append(path / "model")
        except CheckpointError as e:  # a damaged export: the newest good checkpoint may still serve
            log.warning("skipping %s: %s", path / "model", e)
    ckpt = find_resumable(path / "checkpoints", log)
    if ckpt is not None and (ckpt / CONFIG_NAME).is_file():
        candidates.append(ckpt)
    if not candidates:
        raise ValueError(f"{path}: no saved model here (expected {CONFIG_NAME}, or a run folder with "
                         "model/ or a checkpoint; a run that never reached its first checkpoint has none)")
    return max(candidates, key=lambda p: _step(p))


def _step(folder: Path) -> int:
    try:
        step = json.loads((folder / CONFIG_NAME).read_text()).get("metadata", {}).get("step", -1)
        return int(step)
    except (ValueError, TypeError, AttributeError, OSError):
        return -1


def read_config(path: str | Path) -> dict:
    """The ``model.json`` of a saved model (see :func:`resolve` for what ``path`` may be).

    Raises:
        ValueError: no saved model there; the file is not valid JSON or not a JSON object.
    """
    file = resolve(path) / CONFIG_NAME
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(config).__name__}")
    return config


SHARDED_MARKER = ".metadata"  # torch.distributed.checkpoint's (pickled) index of a sharded checkpoint


def is_sharded(folder: Path) -> bool:
    """Whether a folder holds a sharded (``torch.distributed.checkpoint``) checkpoint."""
    return (Path(folder) / SHARDED_MARKER).exists()


def load_pretrained(model_cls: type, path: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None, weights: str = "auto",
                    adapter_kwargs: Mapping[str, Mapping] | None = None, verify: bool = True,
                    trust_remote_code: bool = False):
    """Rebuild a saved model (a ``model_cls``) and load its weights; returned in ``eval()`` mode.

    Reads safetensors and JSON only: nothing in the folder is unpickled, and nothing it names is
    imported unless ``trust_remote_code`` (adapter classes resolve through the registry).

    Args:
        path: a saved-model, checkpoint or run folder (:func:`resolve`).
        device, dtype: where and in which floating type to put it (default: CPU, as saved).
        weights: ``"auto"`` (EMA weights when saved, else the model's), ``"model"`` or ``"ema"``.
        adapter_kwargs: constructor arguments that could not be saved (see :func:`build_model`).
        verify: check every file against the manifest first.
        trust_remote_code: allow adapter classes outside the registry (they are imported and run).

    Raises:
        ValueError: see :func:`build_model` and :func:`resolve`; a corrupt folder; a sharded
            checkpoint (its index is a pickle: ``fusion export`` consolidates your own); weights
            whose names or shapes do not fit the described model (each named).
    """
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    folder = resolve(path)
    if is_sharded(folder):
        raise ValueError(f"{folder} is a sharded training checkpoint (torch.distributed.checkpoint, whose "
                         f"{SHARDED_MARKER} index is a pickle): from_pretrained reads only safetensors model "
                         f"folders. For a run of your own, `fusion export RUN_DIR OUT_DIR` writes one")
    if verify:
        try:
            verify_folder(folder)
        except CheckpointError as e:
            raise ValueError(f"cannot load: {e}") from None
    model = build_model(model_cls, read_config(folder), adapter_kwargs, trust_remote_code,
                        source=str(folder / CONFIG_NAME), device=device)
    load_weights_into(model, folder, weights)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def load_weights_into(model: nn.Module, folder: Path, weights: str = "auto") -> None:
    """Load a saved model's safetensors weights (``weights``: ``auto``, ``model`` or ``ema``)
    into ``model``, checking every name and shape.

    Raises:
        ValueError: no EMA weights when ``weights="ema"``; names or shapes that do not fit.
    """
    _load_checked(model, folder / WEIGHTS_NAME)
    ema = folder / EMA_NAME
    if weights == "ema" and not ema.is_file():
        raise ValueError(f"{folder}: no EMA weights saved (use weights='model' or 'auto')")
    if weights != "model" and ema.is_file():
        state = load_file(str(ema))
        _check_shapes(model, state, ema)
        model.load_state_dict({**model.state_dict(), **state})


def _check_shapes(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ValueError(f"{source}: weights {unexpected[:5]} do not exist in the described model")
    wrong = [f"{k} has shape {tuple(v.shape)}, the described model {tuple(own[k].shape)}"
             for k, v in state.items() if own[k].shape != v.shape]
    if wrong:  # all of them: one feature count shows in several tensors, and the first may not say which
        raise ValueError(f"{source}: " + "; ".join(wrong[:8]) + (f"; and {len(wrong) - 8} more" if len(wrong) > 8 else ""))


def _load_checked(model: torch.nn.Module, path: Path) -> None:
    state = load_file(str(path))
    _check_shapes(model, state, path)
    try:
        load_weights(model, path)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
