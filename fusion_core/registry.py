"""Finding adapter classes by name: entry points or dotted paths.

Built-in adapters register themselves the same way third-party ones do, through the entry-point
group ``fusion_core.modalities`` in their distribution's metadata::

    [project.entry-points."fusion_core.modalities"]
    audio = "my_package.audio:AudioAdapter"

A config may also name a class by dotted path (``my_package.audio:AudioAdapter`` or
``my_package.audio.AudioAdapter``), which needs no installation.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "fusion_core.modalities"


def registered_adapters() -> dict[str, str]:
    """Short name → ``module:Class`` of every adapter registered through entry points."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def import_object(path: str):
    """Import ``pkg.module:Name`` or ``pkg.module.Name``."""
    if ":" in path:
        module, _, attr = path.partition(":")
    else:
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise ValueError(f"expected a dotted path like 'pkg.module:Class', got {path!r}")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"cannot import module {module!r} for {path!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module!r} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


def adapter_class(name_or_path: str):
    """The adapter class for a registered short name or a dotted path.

    Raises:
        ValueError: unknown name (the message lists the registered ones) or bad path.
    """
    known = registered_adapters()
    if name_or_path in known:
        return import_object(known[name_or_path])
    if "." in name_or_path or ":" in name_or_path:
        return import_object(name_or_path)
    close = difflib.get_close_matches(name_or_path, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown adapter {name_or_path!r}{hint}; registered: {sorted(known)} "
        "(or give a dotted path such as 'my_package.audio:AudioAdapter')"
    )


def class_ref(cls: type) -> str:
    """How a config names ``cls``: its registered short name, else ``module:QualName``."""
    path = f"{cls.__module__}:{cls.__qualname__}"
    for name, value in registered_adapters().items():
        if value == path:
            return name
    return path


def build_adapter(name_or_path: str, **kwargs):
    """Instantiate an adapter by short name or dotted path with keyword arguments."""
    return adapter_class(name_or_path)(**kwargs)
