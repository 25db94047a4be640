"""The fusion-core guides (the *.md files here), shipped with the package: ``fusion docs``."""
