"""Configs: structured OmegaConf from dataclasses, merged defaults < YAML preset < YAML file <
``key=value`` overrides; unknown keys and wrong types are errors that name the key and suggest the
closest valid ones.

As in lingua/torchtune: each component has an ``*Args`` dataclass; a recipe's config nests them;
the fully resolved config is written into the run folder and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key, value or file is invalid; the message says which and what would be valid."""


def valid_keys(schema: Any, prefix: str = "") -> list[str]:
    """Every dotted key path of a (nested) dataclass schema."""
    out = []
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        out.append(key)
        typ = f.type if not isinstance(f.type, str) else None
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += valid_keys(default, key + ".")
        elif typ is not None and dataclasses.is_dataclass(typ):
            out += valid_keys(typ, key + ".")
    return out


def _suggest(key: str, keys: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    if not close:  # try the last component against same-depth keys
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.7)][:3]
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _merge(base: DictConfig, other: Any, source: str, keys: Sequence[str]) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except (ConfigKeyError, ConfigAttributeError) as e:
        key = e.full_key or getattr(e, "key", "?")
        raise ConfigError(f"{source}: unknown config key {key!r}{_suggest(str(key), keys)}") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{source}: bad value for {key!r}: {msg}") from None


Layer = str | Path | dict | tuple[str, Any]


def read_yaml(path: str | Path) -> DictConfig:
    """One YAML config file, as a DictConfig.

    Raises:
        ConfigError: the file is missing, is not valid YAML or is not a mapping of keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys (key: value), got a list")
    return loaded


def layer_config(layer: Layer) -> tuple[str, DictConfig]:
    """A config layer as ``(what to call it in messages, its contents)``: a YAML file's path, a
    dict (a backbone preset's sizes) or an already-read ``(name, mapping)`` pair."""
    if isinstance(layer, tuple):
        name, contents = layer
        return name, OmegaConf.create(contents)
    if isinstance(layer, dict):
        return "backbone preset", OmegaConf.create(layer)
    return str(layer), read_yaml(layer)


def load_config(schema: type[T] | T, presets: Sequence[Layer] = (),
                overrides: Sequence[str] = ()) -> DictConfig:
    """Build a config: ``schema`` defaults, then each layer of ``presets`` (a YAML file, a dict
    such as a backbone preset's sizes, or a ``(name, mapping)`` pair), then dotlist overrides.
    The result is validated by building the dataclasses (their ``__post_init__`` checks run).

    Raises:
        ConfigError: unknown key (with did-you-mean), wrong type, malformed override, missing
            file, or a value the dataclasses reject (the message names it).
    """
    cfg = OmegaConf.structured(schema)
    keys = valid_keys(schema)
    for layer in presets:
        name, contents = layer_config(layer)
        cfg = _merge(cfg, contents, name, keys)
    for item in overrides:
        if "=" not in item or item.startswith("-"):
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.steps=100)")
        cfg = _merge(cfg, _dotlist(item), f"override {item!r}", keys)
    OmegaConf.set_readonly(cfg, False)
    to_object(cfg)
    return cfg


def _dotlist(item: str) -> DictConfig:
    """One ``key=value`` override; a value YAML cannot read is taken as the plain string it is
    (a strftime format: ``%`` opens a YAML directive)."""
    try:
        return OmegaConf.from_dotlist([item])
    except yaml.YAMLError:
        key, value = item.split("=", 1)
        out = OmegaConf.create()
        OmegaConf.update(out, key, value)
        return out


def to_object(cfg: DictConfig) -> Any:
    """The config as its dataclass instance (validated).

    Raises:
        ConfigError: a value a dataclass's ``__post_init__`` rejects.
    """
    try:
        return OmegaConf.to_object(cfg)
    except ValueError as e:
        raise ConfigError(f"invalid config: {e}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid config: {str(e).splitlines()[0]}") from None


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from .checkpoint import atomic_write_text

    atomic_write_text(Path(path), to_yaml(cfg))


# -- validation helpers for config dataclasses' __post_init__ ---------------------------------------

def check_choice(key: str, value: Any, options: Sequence) -> None:
    """Raise ``ValueError`` naming ``key`` and the valid ``options`` unless ``value`` is one."""
    if value not in options:
        raise ValueError(f"{key} must be one of {tuple(options)}, got {value!r}")


def check_fraction(key: str, value: float, upper_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is in [0, 1] (or [0, 1) with ``upper_open``)."""
    if not (0 <= value < 1 if upper_open else 0 <= value <= 1):
        raise ValueError(f"{key} must be in [0, 1{')' if upper_open else ']'}, got {value}")


def check_at_least(obj: Any, low: int, *keys: str) -> None:
    """Raise ``ValueError`` unless every field ``keys`` of ``obj`` is ``>= low``."""
    for key in keys:
        if getattr(obj, key) < low:
            raise ValueError(f"{key} must be >= {low}, got {getattr(obj, key)}")


def check_image_fits_row(image_size: int, patch_size: int, max_len: int) -> None:
    """An image's patches must fit a packed row with its markers: refuse, at config time, an image
    size no row can hold (before any image is drawn or allocated).

    Raises:
        ValueError: names the positions an image takes and ``data.max_len``.
    """
    positions = (image_size // patch_size) ** 2
    if positions + 2 > max_len:
        raise ValueError(f"data.image_size={image_size} with model.patch_size={patch_size} gives images of "
                         f"{positions} positions, more than a row of data.max_len={max_len} holds (with its markers)")
