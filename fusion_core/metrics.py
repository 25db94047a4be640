"""Moved to :mod:`fusion_core.engine.metrics` (the training engine has its own package). This path
re-exports it for one release: ``fusion_core.metrics is fusion_core.engine.metrics``."""

from fusion_core._moved import alias

alias(__name__, "fusion_core.engine.metrics")
