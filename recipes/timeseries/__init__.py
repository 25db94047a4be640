"""Recipe "timeseries" (TransFusion). See :mod:`.recipe`."""

from .recipe import TSConfig, recipe

__all__ = ["TSConfig", "recipe"]
