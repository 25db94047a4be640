"""Old module paths kept importable for one release after a move (``fusion_core.trainer`` →
``fusion_core.engine.trainer``): the old name becomes the new module itself, so both paths give
the same objects (and patching one patches the other)."""

from __future__ import annotations

import importlib
import sys
import warnings


def alias(old: str, new: str) -> None:
    """Make ``sys.modules[old]`` the module ``new``, with a ``DeprecationWarning`` naming it."""
    warnings.warn(f"{old} moved to {new}; the old path goes away in the next release",
                  DeprecationWarning, stacklevel=3)
    module = importlib.import_module(new)
    if sys.modules.get(old) is not module and old != "__main__":
        sys.modules[old] = module
