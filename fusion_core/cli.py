"""Moved to :mod:`fusion_core.engine.cli` (the training engine has its own package). This path
re-exports it for one release: ``fusion_core.cli is fusion_core.engine.cli``."""

from fusion_core._moved import alias

alias(__name__, "fusion_core.engine.cli")

if __name__ == "__main__":  # python -m fusion_core.cli keeps working for one release
    import sys

    from fusion_core.engine.cli import entry

    sys.exit(entry())
