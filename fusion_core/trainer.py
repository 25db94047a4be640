"""Moved to :mod:`fusion_core.engine.trainer` (the training engine has its own package). This path
re-exports it for one release: ``fusion_core.trainer is fusion_core.engine.trainer``."""

from fusion_core._moved import alias

alias(__name__, "fusion_core.engine.trainer")
