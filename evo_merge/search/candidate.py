"""A candidate: one merge recipe in search form, with a stable identity.

Two genomes that build the same model (equal to `SIGNIFICANT` digits, other methods'
hyperparameters aside) share one `key`, and the store keys evaluations by it: that is what makes
a resumed or replayed search evaluate nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evo_merge.files import parse_json

SIGNIFICANT = 6  # genomes equal to 6 significant digits are the same candidate


def round_value(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT}g}")


MODEL = "model"  # one weight per endpoint for the whole model


@dataclass(frozen=True)
class Candidate:
    """Method, endpoint weights and method parameters. With `granularity` `blocks:N` the weights
    are each endpoint's group weights in turn (outside the blocks, then each group of N blocks)."""

    method: str
    weights: tuple[float, ...]
    params: tuple[tuple[str, Any], ...] = field(default=())
    granularity: str = MODEL

    @property
    def key(self) -> str:
        parts = [self.method, list(self.weights), [list(p) for p in self.params]]
        return json.dumps(parts if self.granularity == MODEL else [*parts, self.granularity])

    @classmethod
    def from_key(cls, key: str) -> Candidate:
        method, weights, params, *granularity = parse_json(key)
        return cls(method, tuple(weights), tuple((k, v) for k, v in params), *granularity)

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def endpoint_weights(self, n_models: int) -> list[tuple[float, ...]]:
        """Each endpoint's weights: one (model granularity) or its group weights."""
        size = len(self.weights) // n_models
        return [self.weights[t * size:(t + 1) * size] for t in range(n_models)]

    def weights_text(self) -> str:
        """The weights as tables write them: `1 0.5 0`."""
        return " ".join(f"{w:g}" for w in self.weights)

    def params_text(self) -> str:
        """The method parameters as tables write them: `density=0.2 lambda=1`."""
        return " ".join(f"{k}={v:g}" for k, v in self.params)

    def describe(self) -> str:
        """One line for tables and logs: method, weights, parameters."""
        weights, params = self.weights_text(), self.params_text()
        where = "" if self.granularity == MODEL else f" {self.granularity}"
        return f"{self.method} [{weights}]{where}" + (f" {params}" if params else "")


def grouped_candidate(method: str, groups: Sequence[Sequence[float]], params: tuple[tuple[str, Any], ...],
                      granularity: str) -> Candidate:
    """A candidate from each endpoint's group weights. Equal weights in every group build the
    model-granularity merge, so they get its candidate (and key): seeds, references and
    evaluations stored by a model-granularity run are shared."""
    if granularity == MODEL or all(len(set(g)) == 1 for g in groups):
        return Candidate(method, tuple(g[0] for g in groups), params)
    return Candidate(method, tuple(w for g in groups for w in g), params, granularity)


def base_candidate(n_models: int) -> Candidate:
    """The base model itself: task arithmetic with every weight 0."""
    return Candidate("task_arithmetic", (0.0,) * n_models, (("lambda", 1.0),))


def endpoint_candidate(i: int, n_models: int) -> Candidate:
    """Endpoint `i` itself: task arithmetic with its weight 1 and the others 0."""
    return Candidate("task_arithmetic", tuple(1.0 if t == i else 0.0 for t in range(n_models)), (("lambda", 1.0),))


def reference_candidates(endpoint_labels: list[str] | tuple[str, ...]) -> list[tuple[str, Candidate]]:
    """("base", the base) then (label, endpoint) for each endpoint, as candidates."""
    n = len(endpoint_labels)
    return [
        ("base", base_candidate(n)),
        *((label, endpoint_candidate(i, n)) for i, label in enumerate(endpoint_labels)),
    ]


def standard_merges(n_models: int, lambdas: tuple[float, ...] = (0.3, 0.5, 0.7, 1.0)) -> dict[str, Candidate]:
    """The merges a user tries first, each endpoint weighted 1: task arithmetic over a lambda
    grid, TIES at density 0.2, TSV-M at alpha 1."""
    ones = (1.0,) * n_models
    out = {f"task_arithmetic lambda={lam}": Candidate("task_arithmetic", ones, (("lambda", lam),)) for lam in lambdas}
    out["ties density=0.2"] = Candidate("ties", ones, (("density", 0.2), ("lambda", 1.0)))
    out["tsv alpha=1"] = Candidate("tsv", ones, (("alpha", 1.0),))
    return out
