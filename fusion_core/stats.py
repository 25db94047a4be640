"""Moved to :mod:`fusion_core.engine.stats` (the training engine has its own package). This path
re-exports it for one release: ``fusion_core.stats is fusion_core.engine.stats``."""

from fusion_core._moved import alias

alias(__name__, "fusion_core.engine.stats")
