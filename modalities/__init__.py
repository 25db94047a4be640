"""Modality adapters, installed as ``fusion_core.modalities`` (the folder is ``modalities/`` in the
repository; PyPI's ``modalities`` is another project).

The built-ins register under the entry-point group ``fusion_core.modalities`` like any third-party
adapter (``text``, ``image``, ``timeseries``) and import from here::

    from fusion_core.modalities import ImageAdapter, TextAdapter, TimeSeriesAdapter

The conformance kit for adapter authors is :mod:`fusion_core.modalities.testing` (it needs pytest).
"""

from .image import ImageAdapter
from .text import ByteTokenizer, TextAdapter, WordTokenizer
from .timeseries import TimeSeriesAdapter

__all__ = ["ByteTokenizer", "ImageAdapter", "TextAdapter", "TimeSeriesAdapter", "WordTokenizer"]
