"""evo-merge: evolutionary model-merge search with IRT-estimated fitness."""

__version__ = "0.1.0"
