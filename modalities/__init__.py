"""Modality adapters, installed as ``fusion_core.modalities`` (the folder is ``modalities/`` in the
repository; PyPI's ``modalities`` is another project)."""
