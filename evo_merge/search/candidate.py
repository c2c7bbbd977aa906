"""A candidate: one merge recipe in search form, with a stable identity.

Two genomes that build the same model (equal to `SIGNIFICANT` digits, other methods'
hyperparameters aside) share one `key`, and the store keys evaluations by it: that is what makes
a resumed or replayed search evaluate nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SIGNIFICANT = 6  # genomes equal to 6 significant digits are the same candidate


def round_value(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT}g}")


@dataclass(frozen=True)
class Candidate:
    """Method, per-endpoint weights and method parameters."""

    method: str
    weights: tuple[float, ...]
    params: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def key(self) -> str:
        return json.dumps([self.method, list(self.weights), [list(p) for p in self.params]])

    @classmethod
    def from_key(cls, key: str) -> Candidate:
        method, weights, params = json.loads(key)
        return cls(method, tuple(weights), tuple((k, v) for k, v in params))

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def describe(self) -> str:
        """One line for tables and logs: method, weights, parameters."""
        weights = " ".join(f"{w:g}" for w in self.weights)
        params = " ".join(f"{k}={v:g}" for k, v in self.params)
        return f"{self.method} [{weights}]" + (f" {params}" if params else "")


def base_candidate(n_models: int) -> Candidate:
    """The base model itself: task arithmetic with every weight 0."""
    return Candidate("task_arithmetic", (0.0,) * n_models, (("lambda", 1.0),))


def endpoint_candidate(i: int, n_models: int) -> Candidate:
    """Endpoint `i` itself: task arithmetic with its weight 1 and the others 0."""
    return Candidate("task_arithmetic", tuple(1.0 if t == i else 0.0 for t in range(n_models)), (("lambda", 1.0),))


def reference_candidates(endpoint_labels: list[str] | tuple[str, ...]) -> list[tuple[str, Candidate]]:
    """("base", the base) then (label, endpoint) for each endpoint, as candidates."""
    n = len(endpoint_labels)
    return [("base", base_candidate(n)), *((label, endpoint_candidate(i, n)) for i, label in enumerate(endpoint_labels))]


def standard_merges(n_models: int, lambdas: tuple[float, ...] = (0.3, 0.5, 0.7, 1.0)) -> dict[str, Candidate]:
    """The merges a user tries first, each endpoint weighted 1: task arithmetic over a lambda
    grid, TIES at density 0.2, TSV-M at alpha 1."""
    ones = (1.0,) * n_models
    out = {f"task_arithmetic lambda={lam}": Candidate("task_arithmetic", ones, (("lambda", lam),)) for lam in lambdas}
    out["ties density=0.2"] = Candidate("ties", ones, (("density", 0.2), ("lambda", 1.0)))
    out["tsv alpha=1"] = Candidate("tsv", ones, (("alpha", 1.0),))
    return out
