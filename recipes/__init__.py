"""Recipes, installed as ``fusion_core.recipes`` (the folder is ``recipes/`` in the repository;
PyPI's ``recipes`` is another project)."""
