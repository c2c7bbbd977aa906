"""Merge methods (a registry of per-tensor functions), the streaming merge and the in-place merger."""

# the built-in methods register themselves on import; importing them here (not from the
# registry) keeps the registry free of a circle with the modules that use it
from evo_merge.merge import geometric, methods, selective, sparse, subspace  # noqa: F401
from evo_merge.merge.registry import (
    Hyperparameter,
    MergeMethod,
    combine_pieces,
    get_method,
    list_methods,
    register_method,
)

__all__ = ["Hyperparameter", "MergeMethod", "combine_pieces", "get_method", "list_methods", "register_method"]
