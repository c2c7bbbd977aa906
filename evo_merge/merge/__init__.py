"""Merge methods (a registry of per-tensor functions), the streaming merge and the in-place merger."""

from evo_merge.merge.registry import (
    Hyperparameter,
    MergeMethod,
    combine_pieces,
    get_method,
    list_methods,
    register_method,
)

__all__ = ["Hyperparameter", "MergeMethod", "combine_pieces", "get_method", "list_methods", "register_method"]
