"""Finding adapter classes by name — through the registry only, unless the user opts in.

Built-in adapters register themselves the same way third-party ones do, through the entry-point
group ``fusion_core.modalities`` in their distribution's metadata::

    [project.entry-points."fusion_core.modalities"]
    audio = "my_package.audio:AudioAdapter"

The registry is what is *installed*: the built-ins and the entry points of installed packages.
A name that a file or config gives (``model.json`` of a folder someone sent, a recipe config)
resolves only there, and the class must subclass :class:`~fusion_core.adapter.Adapter`. A dotted
path outside the registry (``my_package.audio:AudioAdapter``) would import and run code the
file names: it needs ``trust_remote_code=True`` (``--trust-remote-code`` on the command line),
the Hugging Face convention.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "fusion_core.modalities"
TRUST_FLAG = "trust_remote_code=True (CLI: --trust-remote-code)"


class UntrustedCode(ValueError):
    """A file or config names code outside the registry, and the user did not opt in."""


def registered_adapters() -> dict[str, str]:
    """Short name → ``module:Class`` of every adapter registered through entry points."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def import_object(path: str):
    """Import ``pkg.module:Name`` or ``pkg.module.Name`` (only for names the user or the
    installed registry gave; never for a name read from a file without trust)."""
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


def _as_adapter_class(obj, what: str):
    from .adapter import Adapter

    if not (isinstance(obj, type) and issubclass(obj, Adapter)):
        raise ValueError(f"{what} is {obj!r}, not a subclass of fusion_core.Adapter")
    return obj


def adapter_class(name_or_path: str, trust_remote_code: bool = False):
    """The adapter class for a registered short name (or, with ``trust_remote_code``, a dotted
    path). A dotted path that is exactly a registered entry point's value counts as registered.

    Raises:
        UntrustedCode: a dotted path outside the registry without ``trust_remote_code`` (the
            message names the class and the flag).
        ValueError: an unknown name (the message lists the registered ones), a bad path, or a
            class that does not subclass ``Adapter``.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"an adapter class is named by a non-empty string, got {name_or_path!r}")
    known = registered_adapters()
    if name_or_path in known:
        return _as_adapter_class(import_object(known[name_or_path]), f"registered adapter {name_or_path!r}")
    for name, value in known.items():  # a registered class spelled as its path (either separator)
        if value.replace(":", ".") == name_or_path.replace(":", "."):
            return _as_adapter_class(import_object(value), f"registered adapter {name!r}")
    if "." in name_or_path or ":" in name_or_path:
        if not trust_remote_code:
            raise UntrustedCode(
                f"adapter class {name_or_path!r} is not a registered adapter (registered: {sorted(known)}); "
                f"loading it would import and run code that a file names. If you trust its source, pass "
                f"{TRUST_FLAG}; or install the package that registers it (entry point group "
                f"{ENTRY_POINT_GROUP!r})")
        return _as_adapter_class(import_object(name_or_path), f"{name_or_path!r}")
    close = difflib.get_close_matches(name_or_path, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown adapter {name_or_path!r}{hint}; registered: {sorted(known)} "
        f"(a dotted path such as 'my_package.audio:AudioAdapter' needs {TRUST_FLAG})"
    )


def class_ref(cls: type) -> str:
    """How a config names ``cls``: its registered short name, else ``module:QualName``."""
    path = f"{cls.__module__}:{cls.__qualname__}"
    for name, value in registered_adapters().items():
        if value == path:
            return name
    return path


def build_adapter(name_or_path: str, trust_remote_code: bool = False, **kwargs):
    """Instantiate an adapter by registered short name (or, with ``trust_remote_code``, a dotted
    path) with keyword arguments.

    Raises:
        UntrustedCode, ValueError: see :func:`adapter_class`; a constructor argument the class
            does not take (named).
    """
    cls = adapter_class(name_or_path, trust_remote_code)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"adapter {name_or_path!r}: {e}") from None
