"""MASS: per-input routing over task-singular-vector subspaces (storage, router, model, folder)."""

from evo_merge.mass.factors import MassFactors
from evo_merge.mass.model import MassModel, load_mass
from evo_merge.mass.routing import RoutingConfig

__all__ = ["MassFactors", "MassModel", "RoutingConfig", "load_mass"]
