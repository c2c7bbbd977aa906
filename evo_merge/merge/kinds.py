"""What a search candidate can be: a registered (static) merge method, or MASS.

A static method writes one set of weights; MASS (`evo_merge.mass`) keeps the base and each
task's TSV factors and picks, per input, which tasks' merge answers. Both declare their
hyperparameters the same way, so configs are validated and genomes built from one lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evo_merge.errors import UserError, did_you_mean
from evo_merge.merge.registry import MASS, PLUGIN_HINT, Hyperparameter, get_method, list_methods, unloadable

Ranges = dict[str, tuple[float, float]]


# MASS routing settings the search may vary. `layer` has no fixed upper bound: its search
# range is the base's MLP blocks, found when the campaign opens the base.
MASS_HYPERPARAMETERS = (
    Hyperparameter("layer", 0, low=0, help="block whose MLP input is routed on"),
    Hyperparameter("threshold", 0.2, low=0.0, high=1.0, search_range=(0.05, 0.5),
                   help="keep tasks with a routing probability above this"),
    Hyperparameter("max_tasks", 3, low=1, search_range=(1, 3), help="keep at most this many tasks"),
)
MASS_SETTINGS = {h.name: h for h in MASS_HYPERPARAMETERS}  # the one table of MASS's defaults and bounds
MASS_TOKENS = ("mean", "last")  # what the router reads of an input: the mean over its tokens, or its last


def kind_hyperparameters(name: str) -> tuple[Hyperparameter, ...]:
    """The declared hyperparameters of a candidate kind (raises UserError for unknown names)."""
    if name == MASS:
        return MASS_HYPERPARAMETERS
    if name not in list_methods():
        if (failed := unloadable(name)) is not None:  # installed, and its entry point raised
            raise UserError(failed)
        raise UserError(f"unknown merge method {name!r}{did_you_mean(name, list_kinds())} "
                        f"(known: {', '.join(list_kinds())}){PLUGIN_HINT}")
    method = get_method(name)
    if method.n_models[1] == 0:
        raise UserError(f"{name} copies one model's tensors (for stacking slices); it merges nothing "
                        "a search could vary")
    return method.hyperparameters


def list_kinds() -> list[str]:
    return sorted([*list_methods(), MASS])


def kind_hyperparameter(name: str, parameter: str) -> Hyperparameter | None:
    return next((h for h in kind_hyperparameters(name) if h.name == parameter), None)


def declared_ranges(method: str, configured: Mapping[str, Any]) -> Ranges:
    """The configured range of each searchable hyperparameter, else its declared one; none for one
    configured as a single value (fixed in every candidate: no gene)."""
    ranges: Ranges = {}
    for hp in kind_hyperparameters(method):
        if not hp.searchable or hp.kind is bool:
            continue
        if hp.name in configured:
            if isinstance(configured[hp.name], (tuple, list)):
                ranges[hp.name] = tuple(configured[hp.name])
        elif hp.search_range is not None:
            ranges[hp.name] = hp.search_range
        elif hp.low is not None and hp.high is not None:
            ranges[hp.name] = (hp.low, hp.high)
    return ranges
