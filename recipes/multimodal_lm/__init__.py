"""Recipe "multimodal_lm" (Transfusion). See :mod:`.recipe`."""

from .recipe import MMConfig, recipe

__all__ = ["MMConfig", "recipe"]
